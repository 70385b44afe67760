"""Autoregressive distillation (config.distill): the loss against numpy, a b1.58 student trained by an fp
teacher run of another shape, the tokenizer/vocabulary check, and bit-exact resume with a teacher."""

import json
import os

import jax
import numpy as np
import pytest
from builders import losses, tiny_config
from flax import nnx

from bitjax import errors
from bitjax.run import checkpoint as ckpt_lib
from bitjax.train import distill, trainer


# ---------------------------------------------------------------- the loss, restated in numpy
def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_distill(student, teacher, mask, kind, T):
    """Per masked position: −T² Σ_c p log q ('ce', FBI-LLM) or T² Σ_c p (log p − log q) ('kl', Hinton);
    p, q = softmax(teacher / T), softmax(student / T); averaged over the masked positions."""
    log_p, log_q = np_log_softmax(teacher / T), np_log_softmax(student / T)
    p = np.exp(log_p)
    per = -(p * log_q).sum(-1) if kind == "ce" else (p * (log_p - log_q)).sum(-1)
    return T * T * (per * mask).sum() / mask.sum()


def np_label_ce(logits, targets, mask):
    nll = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()


@pytest.mark.parametrize("kind, T", [("ce", 1.0), ("kl", 1.0), ("ce", 2.0), ("kl", 0.5)])
def test_distillation_loss_matches_numpy(kind, T):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 5, 11)) * 3, rng.normal(size=(2, 5, 11)) * 3
    mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
    total, count = distill.loss(s.astype(np.float32), t.astype(np.float32), mask, kind, T)
    assert float(count) == mask.sum()
    np.testing.assert_allclose(float(total) / float(count), np_distill(s, t, mask, kind, T), rtol=1e-5)


def test_ce_and_kl_differ_by_the_teachers_entropy_only():
    """Same gradient for the student; a student equal to the teacher has KL 0."""
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(1, 4, 7)).astype(np.float32), rng.normal(size=(1, 4, 7)).astype(np.float32)
    mask = np.ones((1, 4), np.float32)
    g = {k: np.asarray(jax.grad(lambda x, k=k: distill.loss(x, t, mask, k, 2.0)[0])(s)) for k in ("ce", "kl")}
    np.testing.assert_allclose(g["ce"], g["kl"], atol=1e-6)
    assert abs(float(distill.loss(t, t, mask, "kl", 1.0)[0])) < 1e-5
    assert np.all(np.asarray(jax.grad(lambda x: distill.loss(s, x, mask, "ce", 1.0)[0])(t)) == 0)  # frozen


# ---------------------------------------------------------------- a teacher run
@pytest.fixture(scope="module")
def teacher(data_dir, tmp_path_factory):
    """A tiny fp run of another shape than the students (d_model 48, 1 layer): the teacher has its own model."""
    wd = str(tmp_path_factory.mktemp("teacher"))
    cfg = tiny_config("fp", steps=6, data_dir=data_dir, **{"optim.warmup_steps": 1})
    cfg.model.update(dict(d_model=48, n_layers=1))
    trainer.train(cfg, wd)
    return wd


def student(data_dir, teacher_wd, steps=8, **over):
    return tiny_config(
        "b158",
        steps=steps,
        data_dir=data_dir,
        **{"distill.teacher_workdir": teacher_wd, "optim.warmup_steps": 1, **over},
    )


@pytest.mark.slow
def test_the_train_step_minimises_the_mix_of_distillation_and_label_loss(data_dir, teacher):
    """train_loss = (1 − w)·distill + w·label CE, each restated in numpy from the two models' logits."""
    cfg = student(data_dir, teacher, **{"distill.loss": "kl", "distill.temperature": 2.0, "distill.label_weight": 0.3})
    setup = trainer.Setup(cfg)
    state = setup.init_fn(jax.random.key(0))
    batch = setup.train_batch(0)
    s_logits = np.asarray(setup.model(state["params"])(batch["inputs"]), np.float64)
    t_logits = np.asarray(nnx.merge(setup.teacher.graphdef, setup.teacher.params)(batch["inputs"]), np.float64)
    assert t_logits.shape == s_logits.shape
    mask, targets = np.asarray(batch["mask"]), np.asarray(batch["targets"])
    d, label = np_distill(s_logits, t_logits, mask, "kl", 2.0), np_label_ce(s_logits, targets, mask)
    _, m = setup.train_step(state, batch)
    np.testing.assert_allclose(float(m["distill_loss"]), d, rtol=2e-5)
    np.testing.assert_allclose(float(m["label_loss"]), label, rtol=2e-5)
    np.testing.assert_allclose(float(m["train_loss"]), 0.7 * d + 0.3 * label, rtol=2e-5)


@pytest.mark.slow
def test_a_b158_student_learns_from_an_fp_teacher_and_resumes_bit_exactly(data_dir, teacher, tmp_path):
    cfg = student(data_dir, teacher, steps=10, checkpoint_every=4)
    out = trainer.train(cfg, str(tmp_path / "a"))
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, 11))
    dist = [r["distill_loss"] for r in rows]
    assert all(np.isfinite(dist)) and all(r["train_loss"] == r["distill_loss"] for r in rows)  # w = 0
    assert np.mean(dist[-3:]) < np.mean(dist[:3]), dist
    assert np.isfinite(out["eval_bpb"]) and "label_loss" in rows[-1]
    # the teacher is not part of the student's checkpoint, and is untouched
    state = ckpt_lib.Checkpointer(str(tmp_path / "a" / "checkpoints"))
    meta = state.restore_metadata()
    assert meta["teacher_step"] == 6 and meta["config"]["distill"]["teacher_workdir"] == teacher
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(str(tmp_path / "a" / "checkpoints" / "10" / "state"))
    assert set(saved) == {"step", "params", "opt_state", "skipped"}
    assert saved["params"]["embed_tokens"]["embedding"].shape[1] == 32  # the student's width, not the teacher's 48
    # preempted after 3 steps, resumed: bitwise the same losses and parameters
    trainer.train(cfg, str(tmp_path / "b"), stop_after=3)
    trainer.train(cfg, str(tmp_path / "b"))
    with open(tmp_path / "b" / "metrics.jsonl") as f:
        rows_b = [json.loads(line) for line in f]
    assert [(r["train_loss"], r["label_loss"]) for r in rows_b] == [(r["train_loss"], r["label_loss"]) for r in rows]
    assert losses(str(tmp_path / "a")) == losses(str(tmp_path / "b"))
    p_b = ocp.StandardCheckpointer().restore(str(tmp_path / "b" / "checkpoints" / "10" / "state"))["params"]
    for x, y in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(p_b)):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- bad teachers: one clear error, before compiling
def fake_run(wd, cfg):
    """A workdir whose checkpoint holds `cfg` as its config (no parameters: the check comes first)."""
    ckpt = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints"))
    ckpt.save(1, {"step": np.zeros((), np.int32)}, {"config": cfg.to_dict()}, force=True)
    ckpt.wait()
    ckpt.close()
    return str(wd)


def test_a_teacher_with_another_vocabulary_is_refused_before_anything_runs(data_dir, tmp_path):
    t_cfg = tiny_config("fp", data_dir=data_dir)
    t_cfg.model.vocab_size = 384  # as the trainer stores it: the byte tokenizer's 259, padded to 128s
    teacher = fake_run(tmp_path / "teacher", t_cfg)
    wd = tmp_path / "student"
    cfg = student(data_dir, teacher, **{"model.vocab_size": 512})
    with pytest.raises(
        errors.UserError,
        match=r"another tokenizer or vocabulary \(config\.model\.vocab_size: "
        r"teacher 384, student 512\).*--config\.model\.vocab_size=384",
    ):
        trainer.train(cfg, str(wd))
    assert not wd.exists()  # nothing created


def test_a_teacher_with_another_tokenizer_is_named():
    fp = {"data.tokenizer": "byte", "tokenizer vocabulary": "byte", "data.name": "a"}
    other = {"data.tokenizer": "sentencepiece", "tokenizer vocabulary": "spm384-abc", "data.name": "b"}
    with pytest.raises(errors.UserError) as e:
        distill.check_teacher("runs/t", other, 384, fp, 384)
    msg = str(e.value)
    assert "data.tokenizer: teacher 'sentencepiece', student 'byte'" in msg and "spm384-abc" in msg
    assert "data.name" not in msg  # the text it was trained on may differ
    distill.check_teacher("runs/t", {**fp, "data.name": "b"}, 384, fp, 384)  # other text, same tokenizer: fine


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_a_missing_or_empty_teacher_workdir_is_one_clear_error(case, data_dir, tmp_path):
    t = tmp_path / "teacher"
    if case == "empty":
        (t / "checkpoints").mkdir(parents=True)
    cfg = student(data_dir, str(t))
    with pytest.raises(
        errors.UserError,
        match=(
            r"config\.distill\.teacher_workdir=.* holds no checkpoints/"
            if case == "missing"
            else r"holds no finished checkpoint"
        ),
    ):
        trainer.train(cfg, str(tmp_path / "student"))
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss", "mse", r"config\.distill\.loss='mse' is invalid: choose one of \('ce', 'kl'\)"),
        ("temperature", 0.0, r"config\.distill\.temperature=0\.0 is invalid: must be a number > 0"),
        ("label_weight", 1.5, r"config\.distill\.label_weight=1\.5 is invalid: must be in \[0, 1\]"),
    ],
)
def test_bad_distill_fields_are_named(field, value, message):
    c = distill.default_config()
    c[field] = value
    with pytest.raises(ValueError, match=message):
        distill.validate_config(c)
    c = distill.default_config().to_dict()
    c["temprature"] = 2.0
    with pytest.raises(ValueError, match=r"config\.distill: unknown field\(s\) \['temprature'\] \(a typo\?"):
        distill.validate_config(c)


@pytest.mark.slow
def test_a_distilled_run_loads_for_eval_without_its_teacher(data_dir, teacher, tmp_path):
    """Sampling/eval of a distilled run read only its own checkpoint (the teacher may be gone)."""
    from bitjax.run import plan as plan_lib

    cfg = student(data_dir, teacher, steps=1, **{"optim.warmup_steps": 0})
    trainer.train(cfg, str(tmp_path / "s"))
    plan, _ = plan_lib.restore_one_device(str(tmp_path / "s"))
    assert plan.config.distill.teacher_workdir == ""
    assert os.path.isdir(teacher)


@pytest.mark.slow
def test_resume_after_the_teacher_trained_on_is_refused(data_dir, teacher, tmp_path):
    """The teacher checkpoint is part of the run: a resume that would distill from another one stops."""
    import shutil

    t = str(tmp_path / "teacher")
    shutil.copytree(teacher, t)
    cfg = student(data_dir, t, steps=4)
    trainer.train(cfg, str(tmp_path / "s"), stop_after=1)
    t_cfg = tiny_config("fp", steps=7, data_dir=data_dir, **{"optim.warmup_steps": 1})
    t_cfg.model.update(dict(d_model=48, n_layers=1))
    trainer.train(t_cfg, t)  # the teacher run goes on to step 7
    listing = sorted(os.listdir(tmp_path / "s" / "checkpoints"))
    with pytest.raises(
        errors.UserError,
        match=r"was distilled from step 6 of config\.distill\.teacher_workdir=.*"
        r"now step 7: resuming would change the teacher mid-run",
    ):
        trainer.train(cfg, str(tmp_path / "s"))
    assert sorted(os.listdir(tmp_path / "s" / "checkpoints")) == listing  # nothing changed
