"""Real subprocesses through the CLI: SIGKILL + resume is bitwise exact, SIGTERM checkpoints and exits 0,
and 2 processes × 4 devices give the same losses as 1 process × 8 devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_paths()["stdlib"]
FILES = [os.path.join(STDLIB, f) for f in ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py")]


def cli(workdir, data_dir, steps, **over):
    args = [
        sys.executable,
        "-m",
        "bitjax.main",
        "--config",
        "configs/transformer.py:quant=b158,size=tiny",
        f"--workdir={workdir}",
        f"--config.total_steps={steps}",
        "--config.batch_size=8",
        "--config.seq_len=32",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.data.name=text_files",
        f"--config.data.paths={tuple(FILES)!r}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.eval_batches=1",
        "--config.model.d_model=32",
        "--config.model.n_layers=2",
        "--config.model.mlp_dim=64",
        "--config.optim.warmup_steps=2",
    ]
    return args + [f"--config.{k}={v}" for k, v in over.items()]


def env(devices=8, **extra):
    e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1")
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e.update(extra)
    return e


def losses(workdir):
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            by_step[r["step"]] = r["train_loss"]  # a re-run step after resume overwrites: same value
    return [by_step[k] for k in sorted(by_step)]


def final_params(workdir):
    import orbax.checkpoint as ocp

    ckdir = os.path.join(workdir, "checkpoints")
    step = max(int(d) for d in os.listdir(ckdir) if d.isdigit())
    tree = ocp.StandardCheckpointer().restore(os.path.join(ckdir, str(step), "state"))
    import jax

    return step, jax.tree.leaves(tree["params"])


def run(args, **kw):
    # check=False: the assert below reports the output with the return code
    p = subprocess.run(args, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if os.path.exists(path) and len(losses(workdir)) >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


def test_sigkill_then_resume_is_bitwise_identical(data_dir, tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    run(cli(ref, data_dir, 30, checkpoint_every=5), env=env())
    proc = subprocess.Popen(
        cli(cut, data_dir, 30, checkpoint_every=5),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(cut, 17, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(losses(cut)) < 30
    run(cli(cut, data_dir, 30, checkpoint_every=5), env=env())  # the killed run's lock is stale: taken over
    assert losses(cut) == losses(ref)  # bitwise: data order, RNG and optimizer state all restored
    with open(os.path.join(cut, "metrics.jsonl")) as f:  # steps re-run after the kill are logged once
        assert [json.loads(line)["step"] for line in f] == list(range(1, 31))
    (s1, p1), (s2, p2) = final_params(ref), final_params(cut)
    assert s1 == s2 == 30
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)


def test_sigterm_checkpoints_and_exits_zero(data_dir, tmp_path):
    wd = str(tmp_path / "term")
    proc = subprocess.Popen(
        cli(wd, data_dir, 100_000, checkpoint_every=100_000),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(wd, 5, proc)
    # meanwhile, a second run on the same workdir is refused: one line, exit 2, nothing touched
    second = subprocess.run(
        cli(wd, data_dir, 100_000), check=False, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 2 and "in use by a live run" in second.stderr, second.stderr[-3000:]
    assert proc.poll() is None  # the first run is still going
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    steps = [int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()]
    assert steps and 5 <= max(steps) < 100_000  # the step it was on, not the end


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(data_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(cli(one, data_dir, 6), env=env(8))
    port = free_port()
    procs = [
        subprocess.Popen(
            cli(two, data_dir, 6),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(4, BITJAX_COORDINATOR=f"localhost:{port}", BITJAX_NUM_PROCESSES="2", BITJAX_PROCESS_ID=str(i)),
        )
        for i in range(2)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-5000:]
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(a, b, rtol=1e-5)  # same math; cross-process reductions may reorder sums


def test_sigkill_then_resume_with_a_teacher_is_bitwise_identical(data_dir, tmp_path):
    """Distillation (config.distill): the frozen teacher is reloaded on resume, so the run stays exact."""
    teacher, ref, cut = str(tmp_path / "teacher"), str(tmp_path / "ref"), str(tmp_path / "cut")
    run(cli(teacher, data_dir, 4, **{"model.quant.method": "fp", "model.n_layers": 1}), env=env())
    over = {"checkpoint_every": 3, "distill.teacher_workdir": teacher, "distill.label_weight": 0.25}
    run(cli(ref, data_dir, 12, **over), env=env())
    proc = subprocess.Popen(
        cli(cut, data_dir, 12, **over), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(cut, 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run(cli(cut, data_dir, 12, **over), env=env())
    rows = {}
    for wd in (ref, cut):
        with open(os.path.join(wd, "metrics.jsonl")) as f:
            rows[wd] = [(r["step"], r["train_loss"], r["distill_loss"], r["label_loss"]) for r in map(json.loads, f)]
    assert rows[cut] == rows[ref] and len(rows[ref]) == 12
    (s1, p1), (s2, p2) = final_params(ref), final_params(cut)
    assert s1 == s2 == 12
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)
