"""Issue 29: the tools beside the trainer (eval, lm_eval_cli, export, ptq, sample) lose nothing, report nothing
false, and answer a user error with one line `error: ...` and exit 2, before loading or compiling."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_trainer import tiny_config

from bitjax import errors
from bitjax.eval import __main__ as eval_cli
from bitjax.eval import perplexity, scoring
from bitjax.train import trainer
from bitjax.train import workdir as workdir_lib


@pytest.fixture(scope="module")
def fp_run(data_dir, tmp_path_factory):
    """A tiny fp transformer trained 2 steps."""
    wd = str(tmp_path_factory.mktemp("fp"))
    trainer.train(tiny_config("fp", steps=2, data_dir=data_dir, **{"optim.warmup_steps": 1}), wd)
    return wd


def one_line_error(capsys, fn, *args) -> str:
    """Runs a CLI main that must exit 2 with one line `error: ...` on stderr; returns that line."""
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), (e.value.code, err)
    return err[0]


# ------------------------------------------------------------------ 29.9 / 29.8: eval's sizes
def test_rolling_windows_refuse_a_non_positive_length_instead_of_looping():
    for bad in (0, -5):
        with pytest.raises(ValueError, match="max_length"):
            list(scoring.rolling_windows([1, 2, 3], 0, bad))
    # the plain restatement: every token predicted once, windows of ≤ L
    toks = list(range(10, 17))
    wins = list(scoring.rolling_windows(toks, 0, 3))
    assert [n for _, n in wins] == [3, 3, 1]
    assert [t for w, n in wins for t in w[-n:]] == toks and all(len(w) <= 4 for w, _ in wins)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_length", "-5"], "--max_length -5: must be ≥ 1"),
        (["--max_length", "0"], "--max_length 0: must be ≥ 1"),
        (["--batch_size", "-3"], "--batch_size -3: must be ≥ 1"),
        (["--batch_size", "0"], "--batch_size 0: must be ≥ 1"),
    ],
)
def test_eval_sizes_are_refused_before_loading(flags, message, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello")
    # the workdir does not exist: a check made after loading would name it instead
    err = one_line_error(
        capsys, eval_cli.main, ["--workdir", str(tmp_path / "nope"), "--text_files", str(tmp_path / "a.txt"), *flags]
    )
    assert message in err


def test_eval_limit_zero_and_out_directory_are_refused_before_loading(tmp_path, capsys):
    base = ["--workdir", str(tmp_path / "nope"), "--tasks", "arc_easy"]
    assert "--limit 0: must be > 0" in one_line_error(capsys, eval_cli.main, [*base, "--limit", "0"])
    assert "is a directory" in one_line_error(capsys, eval_cli.main, [*base, "--out", str(tmp_path)])


def test_eval_unknown_task_is_refused_before_the_model_loads(tmp_path, capsys):
    err = one_line_error(capsys, eval_cli.main, ["--workdir", str(tmp_path / "nope"), "--tasks", "arc_easyy"])
    assert "unknown task(s) arc_easyy" in err


# ------------------------------------------------------------------ 29.7: files read as training reads them
def test_eval_refuses_binary_and_non_utf8_files(fp_run, tmp_path, capsys):
    (tmp_path / "bin.txt").write_bytes(b"abc\0\x01\x02")
    err = one_line_error(capsys, eval_cli.main, ["--workdir", fp_run, "--text_files", str(tmp_path / "bin.txt")])
    assert "not a text file" in err
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    err = one_line_error(capsys, eval_cli.main, ["--workdir", fp_run, "--text_files", str(tmp_path / "latin.txt")])
    assert "not UTF-8 text" in err
    (tmp_path / "empty.txt").write_text("")
    err = one_line_error(capsys, eval_cli.main, ["--workdir", fp_run, "--text_files", str(tmp_path / "empty.txt")])
    assert "no tokens" in err


def test_eval_reads_the_configured_codec_and_counts_the_files_bytes(fp_run, tmp_path):
    from bitjax.run import plan as plan_lib

    plan, params = plan_lib.restore(fp_run)
    scorer = scoring.Scorer(plan, params, batch_size=8)
    (tmp_path / "latin.txt").write_bytes("café au lait, déjà vu\n".encode("latin-1"))
    out = perplexity.score_files(scorer, [str(tmp_path / "latin.txt")], encoding="latin-1")
    text = "café au lait, déjà vu\n"
    ref = perplexity.score_texts(scorer, [text])  # the same text scored from a str: same nats
    assert out["bytes"] == len(text.encode("latin-1")) == 22 and ref["bytes"] == len(text.encode("utf-8"))
    assert out["nats"] == pytest.approx(ref["nats"])
    assert out["bits_per_byte"] == pytest.approx(ref["nats"] / (np.log(2) * 22))


# ------------------------------------------------------------------ 29.8 / 29.13: lm_eval_cli's --model_args
@pytest.mark.parametrize(
    "model_args, message",
    [
        ("workdir={wd},stpe=5", "unknown argument(s) stpe"),
        ("workdir={wd},step=abc", "step='abc': expected an integer"),
        ("workdir={wd},batch_size=-2", "batch_size=-2: expected an integer ≥ 1"),
        ("step=1", "needs --model_args workdir="),
        ("workdir={wd}/missing", "holds no checkpoints/"),
        ("workdir={wd},mesh=data=x", "mesh='data=x': expected data=N"),
    ],
)
def test_model_args_are_validated_as_one_line_errors(model_args, message, fp_run):
    from bitjax.eval.harness import BitjaxLM

    with pytest.raises(errors.UserError) as e:
        BitjaxLM.create_from_arg_string(model_args.format(wd=fp_run), {"batch_size": 1, "device": "cpu"})
    assert message in str(e.value)


def test_model_args_mesh_names_the_run_on_its_axes(fp_run):
    from bitjax.eval.harness import BitjaxLM

    lm = BitjaxLM.create_from_arg_string(f"workdir={fp_run},mesh=data=2;fsdp=4", {"device": "cpu"})
    assert dict(lm.scorer.plan.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_lm_eval_cli_answers_a_user_error_in_one_line(fp_run, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitjax.eval.lm_eval_cli",
            "--model",
            "bitjax",
            "--model_args",
            "workdir=" + fp_run + ",stpe=5",
            "--tasks",
            "arc_easy",
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --model_args: unknown"), r.stderr[
        -2000:
    ]


# ------------------------------------------------------------------ 29.1 / 29.10: export
def export(*args):
    from bitjax.export import __main__ as export_cli

    return export_cli.main(list(args))


def test_hf_export_never_overwrites_a_directory_it_did_not_write(fp_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}')
    (mine / "model.safetensors").write_bytes(b"precious")
    err = one_line_error(capsys, export, "--workdir", fp_run, "--format", "hf", "--out", str(mine))
    assert "did not write" in err
    assert (mine / "config.json").read_text() == '{"mine": 1}' and (
        mine / "model.safetensors"
    ).read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no temporary left behind


def test_hf_export_replaces_only_its_own_unchanged_output(fp_run, tmp_path, capsys):
    out = tmp_path / "hf"
    export("--workdir", fp_run, "--format", "hf", "--out", str(out))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    export("--workdir", fp_run, "--format", "hf", "--out", str(out))  # its own output: replaced
    (out / "notes.txt").write_text("mine")
    err = one_line_error(capsys, export, "--workdir", fp_run, "--format", "hf", "--out", str(out))
    assert "holds more than it wrote" in err and (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_gguf_export_never_overwrites_a_file(fp_run, tmp_path, capsys):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"precious")
    err = one_line_error(capsys, export, "--workdir", fp_run, "--format", "gguf", "--out", str(f))
    assert "exists; nothing was overwritten" in err and f.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "case, message",
    [
        ("ternary_gguf_of_fp", "must be one of"),
        ("missing_workdir", "holds no checkpoints/"),
        ("absent_step", "--step 7:"),
        ("missing_parent", "parent directory"),
        ("gguf_out_is_a_directory", "is a directory"),
        ("hf_out_is_a_file", "is a file"),
    ],
)
def test_export_user_errors_are_one_line_and_leave_nothing(case, message, fp_run, tmp_path, capsys):
    wd, fmt, out, extra = fp_run, "gguf", str(tmp_path / "m.gguf"), []
    if case == "ternary_gguf_of_fp":  # an fp run exports to llama F32/F16/Q8_0, not TQ2_0 (issue 27)
        extra = ["--gguf_type", "tq2_0"]
    elif case == "missing_workdir":
        wd = str(tmp_path / "nope")
    elif case == "absent_step":
        extra = ["--step", "7"]
    elif case == "missing_parent":
        out = str(tmp_path / "no" / "such" / "m.gguf")
    elif case == "gguf_out_is_a_directory":
        out = str(tmp_path)
    elif case == "hf_out_is_a_file":
        fmt, out = "hf", str(tmp_path / "file")
        (tmp_path / "file").write_text("x")
    before = sorted(os.listdir(tmp_path))
    err = one_line_error(capsys, export, "--workdir", wd, "--format", fmt, "--out", out, *extra)
    assert message in err and sorted(os.listdir(tmp_path)) == before
    if case == "ternary_gguf_of_fp":
        assert "fp run" in err and "q8_0" in err


# ------------------------------------------------------------------ 29.2 / 29.3: ptq
def test_ptq_never_deletes_a_run_trained_inside_its_output(fp_run, data_dir, tmp_path, capsys):
    from bitjax import ptq

    q = str(tmp_path / "q")
    ptq.run(fp_run, "rtn", 4, q, calib_sequences=2)
    ptq.run(fp_run, "rtn", 4, q, calib_sequences=2)  # its own unchanged output: replaced
    # the README's "an ordinary run directory": train on in it
    trainer.train(tiny_config("fp", steps=4, data_dir=data_dir, **{"optim.warmup_steps": 1}), q)
    assert os.path.isdir(os.path.join(q, "checkpoints", "4"))
    err = one_line_error(
        capsys, ptq.main, ["--workdir", fp_run, "--method", "rtn", "--out", q, "--calib_sequences", "2"]
    )
    assert "holds more than the tool wrote" in err
    assert os.path.isdir(os.path.join(q, "checkpoints", "4")) and os.path.isfile(os.path.join(q, "metrics.jsonl"))


@pytest.mark.parametrize("where", ["symlink", "inside"])
def test_ptq_out_that_is_or_holds_the_workdir_is_refused(where, fp_run, tmp_path, capsys):
    """The source is itself a PTQ output (marked, so replaceable by name): a symlink to it is still it."""
    from bitjax import ptq

    src = tmp_path / "runs" / "q"
    ptq.run(fp_run, "rtn", 4, str(src), calib_sequences=2)
    if where == "symlink":
        (tmp_path / "linkruns").symlink_to(tmp_path / "runs")
        out = tmp_path / "linkruns" / "q"
    else:
        out = tmp_path / "runs"  # replacing it would delete the run inside
    before = workdir_lib.listing(str(src), "")
    err = one_line_error(capsys, ptq.main, ["--workdir", str(src), "--method", "rtn", "--out", str(out)])
    assert "--workdir" in err and workdir_lib.listing(str(src), "") == before


# ------------------------------------------------------------------ 29.13: sample
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tokens", "-3"], "--tokens -3: must be ≥ 1"),
        (["--temperature", "-1"], "--temperature -1.0: must be ≥ 0"),
        (["--top_k", "-1"], "--top_k -1: must be ≥ 0"),
        (["--num", "0"], "--num 0: must be ≥ 1"),
    ],
)
def test_sample_flags_are_checked_before_loading(flags, message, tmp_path, capsys):
    from bitjax import sample as sample_cli

    err = one_line_error(capsys, sample_cli.main, ["--workdir", str(tmp_path / "nope"), *flags])
    assert message in err and not (tmp_path / "nope").exists()


def test_sample_with_an_empty_prompt_starts_from_eos(fp_run):
    from bitjax import sample as sample_cli

    texts = sample_cli.main(["--workdir", fp_run, "--prompt", "", "--tokens", "3", "--temperature", "0"])
    assert len(texts) == 1 and isinstance(texts[0], str)


# ------------------------------------------------------------------ 29.5: a run killed in its final eval
def test_a_run_killed_in_its_final_eval_is_finished_by_the_rerun(data_dir, tmp_path, monkeypatch):
    from bitjax import sweep

    real = trainer.Setup.evaluate

    def crash(self, params, step=None):
        raise RuntimeError("killed during the final eval")

    cfg = tiny_config("fp", steps=3, data_dir=data_dir, **{"optim.warmup_steps": 1})
    monkeypatch.setattr(trainer.Setup, "evaluate", crash)
    with pytest.raises(RuntimeError):
        trainer.train(cfg, str(tmp_path))
    assert os.path.isdir(tmp_path / "checkpoints" / "3") and not sweep.finished(str(tmp_path), 3)
    monkeypatch.setattr(trainer.Setup, "evaluate", real)
    out = trainer.train(cfg, str(tmp_path))  # already finished: evaluates, and now logs the final row
    assert sweep.finished(str(tmp_path), 3)
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows].count(3) == 1 and rows[-1]["eval_bpb"] == pytest.approx(out["eval_bpb"])
    trainer.train(cfg, str(tmp_path))  # a second rerun adds nothing
    with open(tmp_path / "metrics.jsonl") as f:
        assert len(f.readlines()) == len(rows)


# ------------------------------------------------------------------ 29.14: init_from a mismatched run
def test_init_from_a_mismatched_run_leaves_no_empty_checkpoints(fp_run, data_dir, tmp_path):
    cfg = tiny_config(
        "fp", steps=2, data_dir=data_dir, **{"model.d_model": 64, "init_from": fp_run, "optim.warmup_steps": 1}
    )
    with pytest.raises(errors.UserError, match="config.init_from"):
        trainer.train(cfg, str(tmp_path / "wd"))
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_ptq_calib_sequences_are_bounded_and_text_is_read_as_training_reads_it(fp_run, tmp_path, capsys):
    from bitjax import ptq

    out = tmp_path / "q"
    err = one_line_error(
        capsys, ptq.main, ["--workdir", fp_run, "--method", "rtn", "--out", str(out), "--calib_sequences", "10000000"]
    )
    assert "--calib_sequences 10000000: must be in [1, 4096]" in err and not out.exists()
    (tmp_path / "bin.txt").write_bytes(b"x" * 100 + b"\0\xff")
    err = one_line_error(
        capsys,
        ptq.main,
        ["--workdir", fp_run, "--method", "rtn", "--out", str(out), "--calib_text", str(tmp_path / "bin.txt")],
    )
    assert "not a text file" in err and not out.exists()
