"""Mamba-2 through the trainer: presets (configs/mamba2.py), sharded == single-device loss, exact resume, sampling."""

import importlib.util
import math
import os
import sys

import jax
import numpy as np
import pytest
from builders import FILES, losses, tiny_config
from flax import nnx

from bitjax import models
from bitjax.models import mamba2 as M
from bitjax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg):
    spec = importlib.util.spec_from_file_location("mamba2_config", os.path.join(ROOT, "configs", "mamba2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def mamba_config(method="bimamba", steps=12, data_dir=None, **over):
    c = tiny_config(method, steps=steps, data_dir=data_dir, **over)
    c.model = M.default_config()
    c.model.update(dict(vocab_size=None, d_model=32, n_layers=2, d_state=8, headdim=16, ngroups=2, chunk_size=8))
    c.model.quant.method = method
    return c


@pytest.mark.parametrize(
    "size, params",
    [
        ("small", 130e6),
        ("780m", 780e6),
        pytest.param("1.3b", 1.3e9, marks=pytest.mark.slow),
        pytest.param("2.7b", 2.7e9, marks=pytest.mark.slow),
    ],
)
def test_presets_have_the_papers_sizes(size, params):
    """Bi-Mamba's 780M/1.3B/2.7B (and mamba2-130m) with the GPT-NeoX vocabulary of those checkpoints."""
    cfg = get_config(f"quant=bimamba,size={size}")
    models.validate(cfg.model)
    cfg.model.vocab_size = 50288  # state-spaces/mamba2-*: 50277 padded to a multiple of 16
    abstract = nnx.state(nnx.eval_shape(lambda: M.Mamba2LM(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)
    n = sum(math.prod(v.shape) for v in jax.tree.leaves(abstract))
    assert abs(n - params) / params < 0.06, n
    assert cfg.model.dtype == "bfloat16"


def test_tiny_preset_validates_and_fp_is_full_precision():
    cfg = get_config("quant=fp,size=tiny")
    models.validate(cfg.model)
    assert set(models.describe(cfg.model).values()) == {"fp"}
    assert models.describe(get_config("size=tiny").model)["in_proj"] == "weight=fbi, act=none"
    with pytest.raises(ValueError, match="unknown size"):
        get_config("size=7b")


@pytest.mark.slow
def test_sharded_loss_equals_single_device_loss(data_dir):
    cfg8 = mamba_config(data_dir=data_dir)
    cfg8.mesh.update(dict(data=2, fsdp=2, tensor=2))
    s8 = trainer.Setup(cfg8)
    cfg1 = mamba_config(data_dir=data_dir)
    cfg1.mesh.update(dict(data=1, fsdp=1, tensor=1))
    s1 = trainer.Setup(cfg1, devices=jax.devices()[:1])
    st8, st1 = s8.init_fn(jax.random.key(0)), s1.init_fn(jax.random.key(0))
    mixer = st8["params"]["layers"][0]["mixer"]
    assert mixer["in_proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert mixer["out_proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    for step in range(3):
        st8, m8 = s8.train_step(st8, s8.train_batch(step))
        st1, m1 = s1.train_step(st1, s1.train_batch(step))
        np.testing.assert_allclose(float(m8["train_loss"]), float(m1["train_loss"]), rtol=2e-5)


@pytest.mark.slow
def test_save_restore_continue_matches_uninterrupted_run(data_dir, tmp_path, capsys):
    cfg = mamba_config(steps=12, data_dir=data_dir, checkpoint_every=4)
    out = trainer.train(cfg, str(tmp_path / "a"))
    trainer.train(cfg, str(tmp_path / "b"), stop_after=6)  # "preempted" after step 6
    assert max(os.listdir(tmp_path / "b" / "checkpoints")) == "6"
    trainer.train(cfg, str(tmp_path / "b"))
    la = losses(str(tmp_path / "a"))
    assert la == losses(str(tmp_path / "b"))  # bitwise
    assert np.mean(la[-3:]) < np.mean(la[:3]) and np.isfinite(out["eval_bpb"])
    # python -m bitjax.sample on the run: prefill + O(1) state steps, greedy is deterministic
    from bitjax import sample

    texts = sample.main(["--workdir", str(tmp_path / "a"), "--prompt", "def ", "--tokens", "8", "--temperature", "0"])
    assert len(texts) == 1 and texts[0].startswith("def ")
    assert (
        sample.main(["--workdir", str(tmp_path / "b"), "--prompt", "def ", "--tokens", "8", "--temperature", "0"])
        == texts
    )  # the resumed run's parameters are the same
    # Bi-Mamba's FBI projections have no HF or llama.cpp layout (issue 29.10): one line, exit 2, nothing written
    from test_reliability_tools import export, one_line_error

    capsys.readouterr()  # the training's own output
    before = sorted(os.listdir(tmp_path))
    hf = one_line_error(
        capsys, export, "--workdir", str(tmp_path / "a"), "--format", "hf", "--out", str(tmp_path / "hf")
    )
    gguf = one_line_error(
        capsys, export, "--workdir", str(tmp_path / "a"), "--format", "gguf", "--out", str(tmp_path / "m.gguf")
    )
    assert "fbi" in hf.lower() or "mamba" in hf.lower(), hf
    assert "mamba" in gguf.lower() or "llama.cpp" in gguf, gguf
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_through_the_cli(data_dir, tmp_path):
    """tests/test_fault_tolerance.py's SIGKILL test, small, for `configs/mamba2.py:quant=bimamba` on 8 devices
    with a data × fsdp × tensor mesh."""
    import signal
    import subprocess

    from test_fault_tolerance import env, final_params, run, wait_for_step
    from test_fault_tolerance import losses as cli_losses

    def cli(workdir):
        return [
            sys.executable,
            "-m",
            "bitjax.main",
            "--config",
            "configs/mamba2.py:quant=bimamba,size=tiny",
            f"--workdir={workdir}",
            "--config.total_steps=16",
            "--config.batch_size=8",
            "--config.seq_len=32",
            "--config.log_every=1",
            "--config.eval_every=0",
            "--config.checkpoint_every=4",
            "--config.data.name=text_files",
            f"--config.data.paths={tuple(FILES)!r}",
            f"--config.data.data_dir={data_dir}",
            "--config.data.eval_batches=1",
            "--config.model.d_model=32",
            "--config.model.n_layers=2",
            "--config.model.d_state=8",
            "--config.model.headdim=16",
            "--config.model.chunk_size=8",
            "--config.optim.warmup_steps=2",
            "--config.mesh.data=2",
            "--config.mesh.fsdp=2",
            "--config.mesh.tensor=2",
        ]

    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    run(cli(ref), env=env())
    proc = subprocess.Popen(cli(cut), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(cut, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(cli_losses(cut)) < 16
    run(cli(cut), env=env())
    assert cli_losses(cut) == cli_losses(ref)
    (s1, p1), (s2, p2) = final_params(ref), final_params(cut)
    assert s1 == s2 == 16
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # ~30 s
def test_a_stacked_bimamba_student_distils_from_a_transformer_teacher(data_dir, tmp_path):
    """Bi-Mamba's recipe (FBI-LLM's loss: CE to the teacher's softmax) with a teacher of another family: the
    step's distill_loss equals a numpy restatement over both models' logits, and the run trains on it."""
    import json

    from test_distill import np_distill

    teacher = str(tmp_path / "teacher")
    trainer.train(tiny_config("fp", steps=4, data_dir=data_dir, **{"optim.warmup_steps": 1}), teacher)
    cfg = mamba_config(
        "bimamba", steps=6, data_dir=data_dir, **{"distill.teacher_workdir": teacher, "optim.warmup_steps": 1}
    )
    cfg.model.scan_layers = True
    setup = trainer.Setup(cfg)
    state = setup.init_fn(jax.random.key(0))
    batch = setup.train_batch(0)
    s = np.asarray(setup.model(state["params"])(batch["inputs"]), np.float64)
    t = np.asarray(nnx.merge(setup.teacher.graphdef, setup.teacher.params)(batch["inputs"]), np.float64)
    _, m = setup.train_step(state, batch)
    np.testing.assert_allclose(
        float(m["distill_loss"]), np_distill(s, t, np.asarray(batch["mask"]), "ce", 1.0), rtol=2e-5
    )
    out = trainer.train(cfg, str(tmp_path / "student"))
    with open(tmp_path / "student" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert all(r["train_loss"] == r["distill_loss"] for r in rows) and math.isfinite(out["eval_bpb"])
