"""Nothing a user typed or a crash did loses a run (issue 14): compare never deletes a real run, a crash in
eval keeps the final checkpoint, a live workdir is locked, a resume with other data is refused, and
metrics.jsonl / TensorBoard see each step once."""

import json
import os
import shutil
import signal
import struct
import subprocess

import pytest
from builders import FILES, tiny_config

from bitjax import errors
from bitjax.train import guards, metrics, trainer
from bitjax.train import workdir as workdir_lib


def steps_logged(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


# ------------------------------------------------------------------ 1. compare deletes only its own runs
def test_compare_never_deletes_a_directory_it_did_not_create(tmp_path, capsys):
    from bitjax import compare

    run = tmp_path / "b158"
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 100}\n')
    with pytest.raises(SystemExit) as e:
        compare.main(["--workdir", str(tmp_path), "--methods", "b158", "--steps", "2"])
    assert e.value.code == 2 and "was not made by bitjax.compare" in capsys.readouterr().err
    assert (run / "checkpoints" / "100").is_dir() and (run / "metrics.jsonl").read_text() == '{"step": 100}\n'


def test_compare_replaces_its_own_previous_run(tmp_path):
    from bitjax import compare

    wd = tmp_path / "fp"
    compare.fresh_workdir(str(wd))
    (wd / "metrics.jsonl").write_text('{"step": 3}\n')
    compare.fresh_workdir(str(wd))  # its own scratch run: replaced
    assert sorted(os.listdir(wd)) == [compare.MARKER]


# ------------------------------------------------------------------ 2. save before evaluating
def test_eval_batches_zero_is_refused_before_anything_runs(data_dir, tmp_path):
    with pytest.raises(errors.UserError, match=r"config.data.eval_batches=0"):
        trainer.train(tiny_config("fp", data_dir=data_dir, **{"data.eval_batches": 0}), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_a_crash_in_the_final_eval_keeps_the_final_checkpoint(data_dir, tmp_path, monkeypatch):
    def crash(self, params, step=None):
        raise RuntimeError("eval crashed")

    monkeypatch.setattr(trainer.Setup, "evaluate", crash)
    with pytest.raises(RuntimeError, match="eval crashed"):
        trainer.train(tiny_config("fp", steps=5, data_dir=data_dir, checkpoint_every=0), str(tmp_path))
    assert "5" in os.listdir(tmp_path / "checkpoints")  # saved (and finished) before the eval ran
    assert not (tmp_path / workdir_lib.LOCK_NAME).exists()  # the lock goes with the run


def test_a_crash_in_a_mid_run_eval_keeps_the_trained_steps(data_dir, tmp_path, monkeypatch):
    def crash(self, params, step=None):
        raise RuntimeError("eval crashed")

    monkeypatch.setattr(trainer.Setup, "evaluate", crash)
    with pytest.raises(RuntimeError, match="eval crashed"):
        trainer.train(tiny_config("fp", steps=8, data_dir=data_dir, checkpoint_every=0, eval_every=6), str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["6"]  # saved when the eval at step 6 failed


# ------------------------------------------------------------------ 3. workdir lock
def test_a_live_run_holds_the_workdir(data_dir, tmp_path):
    other = subprocess.Popen(["sleep", "60"])  # stands in for a live run on this host
    try:
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
        lock = {
            "host": workdir_lib.socket.gethostname(),
            "pid": other.pid,
            "start": workdir_lib._proc_start(other.pid),
            "since": "earlier",
        }
        (tmp_path / "LOCK").write_text(json.dumps(lock))
        with pytest.raises(errors.UserError, match=rf"in use by a live run \(pid {other.pid}"):
            trainer.train(tiny_config("fp", steps=5, data_dir=data_dir), str(tmp_path))
        assert os.listdir(tmp_path / "checkpoints") == [] and json.loads((tmp_path / "LOCK").read_text()) == lock
        assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_does_not_block_and_a_foreign_host_is_named(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = workdir_lib.socket.gethostname()
    (tmp_path / "LOCK").write_text(json.dumps({"host": host, "pid": dead.pid}))
    with workdir_lib.Lock(str(tmp_path)) as lock:  # a SIGKILLed run's lock: taken over
        assert json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid() and lock.held
    assert "stale lock" in caplog.text and not (tmp_path / "LOCK").exists()
    (tmp_path / "LOCK").write_text("")  # torn by a kill between create and write: stale too
    workdir_lib.Lock(str(tmp_path)).acquire().release()
    (tmp_path / "LOCK").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "t"}))
    with pytest.raises(errors.UserError, match=r"pid 1 on host elsewhere.*delete .*LOCK"):
        workdir_lib.Lock(str(tmp_path)).acquire()


# ------------------------------------------------------------------ 4. resume with other data / model
@pytest.mark.parametrize(
    "override, message",
    [
        ({"data.paths": tuple(FILES[:-1])}, r"different config.data \(config.data.paths: saved \["),
        ({"model.n_layers": 3}, r"different config.model \(config.model.n_layers: saved 2, now 3\)"),
        ({"seed": 1}, r"config.seed: saved 0, now 1"),
    ],
)
def test_resume_with_other_data_or_model_names_the_field(override, message, data_dir, tmp_path):
    trainer.train(tiny_config("fp", steps=5, data_dir=data_dir), str(tmp_path), stop_after=1)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(errors.UserError, match=message):
        trainer.train(tiny_config("fp", steps=5, data_dir=data_dir, **override), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


@pytest.mark.slow
def test_resume_with_another_tokenizer_of_the_same_padded_size_is_refused(data_dir, tmp_path):
    # byte (259) and a 380-piece sentencepiece both pad to 384: the model config alone cannot tell
    trainer.train(tiny_config("fp", steps=5, data_dir=data_dir), str(tmp_path), stop_after=1)
    spm = tiny_config("fp", steps=5, data_dir=data_dir, **{"data.tokenizer": "sentencepiece", "data.vocab_size": 380})
    with pytest.raises(errors.UserError, match=r"config.data.tokenizer: saved 'byte', now 'sentencepiece'"):
        trainer.train(spm, str(tmp_path))


def test_fingerprint_is_stored_with_the_checkpoint(data_dir, tmp_path):
    from bitjax.run import checkpoint

    trainer.train(tiny_config("fp", steps=1, data_dir=data_dir, **{"optim.warmup_steps": 0}), str(tmp_path))
    ck = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    fp = ck.restore_metadata()["data"]
    ck.close()
    assert fp["data.name"] == "text_files" and fp["tokenizer vocabulary"] == "byte" and len(fp["data.paths"]) == 7


# ------------------------------------------------------------------ 5. each step logged once
def tb_events(workdir):
    """(step, kind) of every event in the TensorBoard files, in file order (kind: 'purge' or a tag)."""
    from tensorboardX.proto import event_pb2

    out = []
    for name in sorted(os.listdir(os.path.join(workdir, "tb"))):
        with open(os.path.join(workdir, "tb", name), "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 16 + n
            if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
                out.append((ev.step, "purge"))
            out += [(ev.step, v.tag) for v in ev.summary.value]
    return out


def test_resume_from_an_older_checkpoint_logs_each_step_once(data_dir, tmp_path):
    cfg = tiny_config("fp", steps=6, data_dir=data_dir, checkpoint_every=2)
    trainer.train(cfg, str(tmp_path), stop_after=5)  # checkpoints 2, 4, 5; rows 1..5
    shutil.rmtree(tmp_path / "checkpoints" / "5")  # as if killed before step 5's save finished
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train_lo')  # and a row torn by the kill
    trainer.train(cfg, str(tmp_path))  # resumes at 4: steps 5, 6 again
    assert steps_logged(tmp_path) == [1, 2, 3, 4, 5, 6]
    events = tb_events(str(tmp_path))
    # TensorBoard drops the first attempt's events from the purge step on, so it too sees each step once
    purge = events.index((5, "purge"))
    kept = [s for s, tag in events[:purge] if tag == "train_loss" and s < 5] + [
        s for s, tag in events[purge:] if tag == "train_loss"
    ]
    assert kept == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ 6, 13. non-finite steps
def test_skips_are_warned_and_the_default_limit_is_proportionate(data_dir, tmp_path, caplog):
    cfg = tiny_config("fp", steps=20, data_dir=data_dir, **{"optim.lr": 1e30, "optim.grad_clip": 0.0})
    assert cfg.max_skipped_steps is None  # default: a tenth of total_steps
    with pytest.raises(FloatingPointError, match=r"of \d+ steps skipped .*more than 2"):
        trainer.train(cfg, str(tmp_path))
    assert "update skipped" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["train_loss"] is None for r in rows)  # NaN is written as null: strict JSON


def test_consecutive_skips_stop_the_run(data_dir, tmp_path):
    cfg = tiny_config(
        "fp",
        steps=20,
        data_dir=data_dir,
        log_every=20,
        max_consecutive_skips=2,
        max_skipped_steps=100,
        **{"optim.lr": 1e30, "optim.grad_clip": 0.0},
    )
    with pytest.raises(FloatingPointError, match=r"3 steps in a row skipped"):
        trainer.train(cfg, str(tmp_path))


def test_nonfinite_stop_without_a_checkpoint_says_so(data_dir, tmp_path):
    cfg = tiny_config(
        "fp", steps=20, data_dir=data_dir, **{"optim.lr": 1e30, "optim.grad_clip": 0.0, "nonfinite": "stop"}
    )
    with pytest.raises(FloatingPointError, match=r"No checkpoint had been written yet") as e:
        trainer.train(cfg, str(tmp_path))
    assert "None" not in str(e.value)


def test_a_second_ctrl_c_quits_at_once():
    with guards.Preemption() as p:
        p._handler(signal.SIGINT, None)
        assert p.requested
        with pytest.raises(KeyboardInterrupt):
            p._handler(signal.SIGINT, None)


def test_metrics_are_strict_json():
    out = metrics.jsonable_metrics({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": 3})
    assert json.dumps(out, allow_nan=False) == '{"a": null, "b": null, "c": 1.5, "d": 3}'


# ------------------------------------------------------------------ 8, 9. config errors found up front
def test_a_trace_time_model_error_is_a_user_error_before_the_workdir(data_dir, tmp_path):
    # a group size that does not divide the input dim (32) only fails when the model runs
    cfg = tiny_config("b158", data_dir=data_dir, **{"model.quant.rules": "*_proj: weight.granularity=group7"})
    with pytest.raises(errors.UserError, match=r"group size 7 does not divide"):
        trainer.train(cfg, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_a_generic_trace_time_error_is_reported_by_setup(data_dir, monkeypatch):
    from bitjax import models

    real = models.get_model

    def failing(name):
        cls = real(name)

        class Failing(cls):
            def __call__(self, *a, **k):
                raise ValueError("this model cannot run with these shapes")

        return Failing

    monkeypatch.setattr(models, "get_model", failing)
    with pytest.raises(errors.UserError, match="cannot run with these shapes"):
        trainer.Setup(tiny_config("fp", data_dir=data_dir))


@pytest.mark.parametrize("size", ["tiny", "small", "1b"])
def test_preset_warmup_scales_with_short_runs(size):
    from bitjax import compare
    from bitjax.train import optim

    for steps in (4, 20):
        cfg = compare._config("b158", steps) if size == "tiny" else _preset(size)
        cfg.total_steps = steps  # as --config.total_steps=N does
        optim.validate_config(cfg.optim, cfg.total_steps)
        assert cfg.optim.warmup_steps < max(steps, 1)
    cfg = _preset(size)
    assert cfg.optim.warmup_steps == {"tiny": 30, "small": 750, "1b": 1000}[size]  # unchanged at full length
    cfg.optim.warmup_steps = 5  # an explicit value replaces the formula
    cfg.total_steps = 3
    with pytest.raises(ValueError, match=r"warmup_steps"):
        optim.validate_config(cfg.optim, cfg.total_steps)


def _preset(size):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cfg", os.path.join(os.path.dirname(__file__), "..", "configs", "transformer.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(f"quant=b158,size={size}")


# ------------------------------------------------------------------ 11. workdir and sample paths
def test_a_workdir_that_cannot_be_one_is_a_user_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(errors.UserError, match=r"is a file, not a directory"):
        workdir_lib.prepare(str(f))
    with pytest.raises(errors.UserError, match=r"cannot be created"):
        workdir_lib.prepare(str(f / "sub"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_workdir_is_a_user_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(errors.UserError, match=r"not writable"):
            workdir_lib.prepare(str(ro))
    finally:
        ro.chmod(0o700)


def test_sample_on_a_mistyped_workdir_creates_nothing(tmp_path, capsys):
    from bitjax import sample

    wd = tmp_path / "typo"
    with pytest.raises(SystemExit) as e:
        sample.main(["--workdir", str(wd)])
    assert e.value.code == 2 and "holds no checkpoints" in capsys.readouterr().err
    assert not wd.exists()


# ------------------------------------------------------------------ 10. sentencepiece on odd text
def test_sentencepiece_trains_on_a_corpus_of_one_huge_line(tmp_path):
    from bitjax.data import tokenizers

    line = "".join(f"x{i % 97}=f(y);" for i in range(6000))  # minified code: ~50 KB, no newline
    tok = tokenizers.train_sentencepiece([line], str(tmp_path / "m.model"), 400)  # was: INTERNAL error
    assert tok.decode(tok.encode(line)) == line


def test_sentencepiece_vocab_smaller_than_the_alphabet_names_the_field(tmp_path):
    from bitjax.data import DataError, tokenizers

    text = "".join(chr(0x4E00 + i) for i in range(400)) + "\n"
    with pytest.raises(DataError, match=r"config.data.vocab_size=300 is smaller than the \d+ distinct"):
        tokenizers.train_sentencepiece([text], str(tmp_path / "m.model"), 300)
