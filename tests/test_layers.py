"""The layer picture of docs/ARCHITECTURE.md holds: no module imports from a layer above its own."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "bitjax"

# docs/ARCHITECTURE.md, bottom to top; a module may import its own layer and those below it.
LAYERS = [
    {"errors", "stats"},
    {"quant"},
    {"config", "nn"},
    {"models", "data"},
    {"run"},
    {"train"},
    {"eval", "export"},
    {"ptq", "convert", "import_hf", "import_gguf", "sample"},
    {"main", "sweep", "compare", "aot"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
# The one deliberate exception: a run's config is the trainer's whole config, so run/config.py reads the
# default sections of two leaf modules of train/ (which import nothing from run/ or train/).
ALLOWED_UP = {("bitjax.run.config", "bitjax.train.optim"), ("bitjax.run.config", "bitjax.train.distill")}


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bitjax"):
            if node.module == "bitjax":
                yield from (f"bitjax.{a.name}" for a in node.names)
            else:
                yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("bitjax"))


def _layer(dotted: str) -> str:
    return dotted.split(".")[1]


def violations(root: pathlib.Path) -> list[str]:
    """'<module> imports <target>' for each import from a higher layer under `root` (a bitjax/ tree)."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts == ("__init__",):
            continue
        me = "bitjax." + ".".join(p for p in parts if p != "__init__")
        assert _layer(me) in RANK, f"{me}: add its package to LAYERS"
        for target in _imports(path):
            if target == "bitjax" or _layer(target) not in RANK:
                continue
            up = RANK[_layer(target)] > RANK[_layer(me)]
            if up and not any(me == a and target.startswith(b) for a, b in ALLOWED_UP):
                wrong.append(f"{me} imports {target}")
    return wrong


def test_every_module_imports_only_its_own_layer_or_below():
    assert len(list(ROOT.rglob("*.py"))) > 50
    wrong = violations(ROOT)
    assert not wrong, "imports from a higher layer (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_the_checker_reports_an_upward_import(tmp_path):
    (tmp_path / "quant").mkdir()
    (tmp_path / "quant" / "weights.py").write_text("import numpy\nfrom bitjax.train import trainer\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.py").write_text("from bitjax.train import optim\nfrom bitjax.quant import ste\n")
    (tmp_path / "models.py").write_text("from bitjax import run\n")
    assert violations(tmp_path) == [
        "bitjax.models imports bitjax.run",
        "bitjax.quant.weights imports bitjax.train.trainer",
    ]
