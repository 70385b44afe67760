"""Every experiments/<study>/combine.py rebuilds its committed results.md, byte for byte, from its committed
results.csv alone (no workdirs), and writes its plots (where matplotlib is installed)."""

import filecmp
import glob
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = sorted(
    os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "experiments", "*", "results.csv"))
)


def _load(study):
    spec = importlib.util.spec_from_file_location(
        f"combine_{study}", os.path.join(ROOT, "experiments", study, "combine.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_study_has_the_standard_shape():
    for d in sorted(glob.glob(os.path.join(ROOT, "experiments", "*", ""))):
        if os.path.exists(os.path.join(d, "check.py")) or os.path.exists(os.path.join(d, "parity.py")):
            continue  # exactness checks, not trained studies: a script and its committed output
        for f in ("run.sh", "results.csv", "combine.py", "README.md", "results.md"):
            assert os.path.exists(os.path.join(d, f)), f"{d} has no {f}"


@pytest.mark.parametrize("study", STUDIES)
def test_combine_rebuilds_results_md(study, tmp_path):
    _load(study).main(str(tmp_path))
    committed = os.path.join(ROOT, "experiments", study, "results.md")
    assert filecmp.cmp(tmp_path / "results.md", committed, shallow=False), (
        f"experiments/{study}/combine.py no longer gives the committed results.md: run it and commit the result"
    )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "experiments", study, "*.png")))
    assert pngs, f"experiments/{study} commits no plot"
    for p in pngs:
        assert (tmp_path / p).stat().st_size > 10_000, f"{study}: {p} not produced"
