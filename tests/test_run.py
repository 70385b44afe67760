"""A run is its workdir: bitjax.run.plan restores it alone (config, tokenizer, parameters), and the tools
that read runs (sample, eval, export, ptq, import_hf) never import the trainer."""

import ast
import glob
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from builders import FILES, STDLIB, tiny_config

from bitjax import errors
from bitjax.run import plan as plan_lib
from bitjax.train import trainer

TOOLS = [
    "bitjax.run.plan",
    "bitjax.sample",
    "bitjax.eval.scoring",
    "bitjax.eval.perplexity",
    "bitjax.eval.__main__",
    "bitjax.export.__main__",
    "bitjax.ptq",
    "bitjax.import_hf",
] + (["bitjax.eval.harness"] if importlib.util.find_spec("lm_eval") else [])


def test_the_tools_that_read_runs_import_no_trainer():
    # what each module imports when loaded ...
    check = (
        "import importlib, sys\n"
        f"for name in {TOOLS!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'bitjax.train.trainer' not in sys.modules, name + ' imports bitjax.train.trainer'\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    # ... and what any of their functions imports later
    for name in TOOLS:
        with open(importlib.util.find_spec(name).origin) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module + "." + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert "bitjax.train.trainer" not in names, f"{name} imports bitjax.train.trainer"


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A tiny fp run trained on text_files with a sentencepiece tokenizer, whose corpus and tfds data_dir
    (the dataset, the token caches and the tokenizer's model) were then deleted: only the workdir is left."""
    root = tmp_path_factory.mktemp("moved")
    corpus, data_dir, workdir = root / "corpus", str(root / "tfds"), str(root / "run")
    corpus.mkdir()
    for f in FILES:
        shutil.copy(f, corpus / os.path.basename(f))
    cfg = tiny_config(
        "fp",
        steps=2,
        data_dir=data_dir,
        **{
            "data.paths": (str(corpus / "*.py"),),
            "data.tokenizer": "sentencepiece",
            "data.vocab_size": 400,
            "optim.warmup_steps": 1,
        },
    )
    trainer.train(cfg, workdir)
    shutil.rmtree(corpus)
    shutil.rmtree(data_dir)
    return workdir


OTHER = [os.path.join(STDLIB, f) for f in ("glob.py", "fnmatch.py")]  # text the run never saw


@pytest.mark.slow
def test_a_run_whose_corpus_is_gone_samples_evaluates_exports_and_calibrates(moved_run, tmp_path):
    from bitjax import ptq
    from bitjax.eval import __main__ as eval_cli
    from bitjax.export import __main__ as export_cli

    plan, _ = plan_lib.restore(moved_run)
    assert plan.tokenizer.name.startswith("spm") and os.path.exists(
        os.path.join(moved_run, "tokenizer", plan.tokenizer.name + ".model")
    )
    # the command line, as a user would run it on another machine (PYTHONPATH and JAX flags inherited)
    out = subprocess.run(
        [sys.executable, "-m", "bitjax.sample", "--workdir", moved_run, "--tokens", "8", "--temperature", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("def ")

    scored = eval_cli.main(["--workdir", moved_run, "--text_files", OTHER[0], "--text_files", OTHER[1]])
    assert scored["documents"] == 2 and np.isfinite(scored["bits_per_byte"])

    info = export_cli.main(["--workdir", moved_run, "--format", "hf", "--out", str(tmp_path / "hf")])
    assert os.path.exists(os.path.join(tmp_path / "hf", "config.json")), info

    q = str(tmp_path / "rtn4")
    result = ptq.main(
        ["--workdir", moved_run, "--method", "rtn", "--calib_sequences", "4", "--out", q]
        + [a for f in OTHER for a in ("--calib_text", f)]
    )
    assert result["calib_sequences"] == 4 and result["calib_data"] == OTHER and result["eval_data"] == OTHER
    assert np.isfinite(result["eval_bpb"]) and np.isfinite(result["fp_eval_bpb"])
    # the PTQ output is a run of its own: tokenizer copied along, it restores without the source
    q_plan, _ = plan_lib.restore(q)
    assert q_plan.tokenizer.name == plan.tokenizer.name


@pytest.mark.slow
def test_a_tokenizer_that_is_missing_or_not_the_runs_is_one_clear_error(moved_run, tmp_path, capsys):
    from bitjax import sample

    copy = str(tmp_path / "copy")
    shutil.copytree(moved_run, copy)
    (model,) = glob.glob(os.path.join(copy, "tokenizer", "*.model"))
    with open(model, "ab") as f:  # another file under the same name
        f.write(b"\0")
    with pytest.raises(SystemExit) as e:
        sample.main(["--workdir", copy, "--tokens", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not the tokenizer this run was trained with" in err and err.count("\n") == 1
    os.remove(model)
    with pytest.raises(SystemExit) as e:
        sample.main(["--workdir", copy, "--tokens", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is missing" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_read_past_and_left_in_place(moved_run, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(moved_run, copy)
    ckpts = copy / "checkpoints"
    shutil.copytree(ckpts / "2", ckpts / "3")  # a newer step, then damaged
    with open(ckpts / "3" / "state" / "manifest.ocdbt", "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(bytes(b ^ 0xFF for b in data))
    with caplog.at_level(logging.WARNING, logger="bitjax"):
        plan, _ = plan_lib.restore(str(copy))
    assert plan.step == 2 and "checkpoint step 3" in caplog.text
    assert sorted(os.listdir(ckpts)) == ["2", "3"]  # a reader renames nothing


def test_a_workdir_from_before_stored_tokenizers_loads_its_byte_tokenizer():
    config = tiny_config("fp")
    assert config.data.tokenizer == "byte"
    tok = plan_lib.restore_tokenizer("unused", {"config": config.to_dict()}, config, "--workdir 'old'")
    assert tok.name == "byte"
    assert plan_lib.tokenizer_meta(tok) == {"name": "byte"}  # nothing to copy into a workdir


def test_a_resolved_plan_leaves_the_callers_config_as_it_was():
    from bitjax.data.tokenizers import ByteTokenizer

    config = tiny_config("a48", steps=20)
    plan = plan_lib.resolve(config, ByteTokenizer())
    assert config.model.vocab_size is None and plan.config.model.vocab_size == 384  # 259 padded to 128s
    assert [start for start, _ in plan.stages] == [0, 19] and plan.stage_at(18) == 0 and plan.stage_at(19) == 1
    assert plan.quant_table == plan.quant_tables[-1] and len(plan.quant_tables) == 2
    assert "quantization from step 19: method a48" in plan.describe()
    json.dumps(plan.quant_table)  # stored with checkpoints as it is


def _live_run_deletes_on_first_read(monkeypatch, ckpts, step, newer):
    """Emulates a run saving every step with keep=1: while the reader reads `step`, the run saves `newer`
    and its keep policy deletes `step` (issue 29.12: eval of such a run failed 4 of 6 times)."""
    real = plan_lib.ckpt_lib.Checkpointer.restore_params
    calls = []

    def restore_params(self, s, target):
        calls.append(s)
        if len(calls) == 1:
            shutil.copytree(ckpts / str(step), ckpts / str(newer))
            shutil.rmtree(ckpts / str(step))
        return real(self, s, target)

    monkeypatch.setattr(plan_lib.ckpt_lib.Checkpointer, "restore_params", restore_params)
    return calls


def test_a_checkpoint_deleted_while_read_by_a_live_run_reads_the_newer_one(moved_run, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(moved_run, copy)
    calls = _live_run_deletes_on_first_read(monkeypatch, copy / "checkpoints", 2, 3)
    with caplog.at_level(logging.WARNING, logger="bitjax"):
        plan, params = plan_lib.restore(str(copy))
    assert calls == [2, 3] and plan.step == 3 and "deleted while being read" in caplog.text
    assert sorted(os.listdir(copy / "checkpoints")) == ["3"]  # nothing renamed as damaged
    _, reference = plan_lib.restore(str(moved_run))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_explicit_step_deleted_while_read_is_one_clear_error(moved_run, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(moved_run, copy)
    _live_run_deletes_on_first_read(monkeypatch, copy / "checkpoints", 2, 3)
    with pytest.raises(errors.UserError, match=r"--step 2: .*deleted that checkpoint while it was being read.*\[3\]"):
        plan_lib.restore(str(copy), 2)
