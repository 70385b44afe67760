"""Quantization warm-up (config.model.quant.warmup_steps, bitjax.quant.warmup): the schedule and the mixed
layer against numpy, λ = 0 / λ = 1 equal to the fp / fully quantized train step, and bit-exact resume in
the middle of a warm-up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from builders import losses, tiny_config
from flax import nnx

from bitjax.nn.bitdense import BitDense
from bitjax.quant import recipes, warmup
from bitjax.train import trainer


# ---------------------------------------------------------------- numpy restatements (HF blog; BitNet b1.58)
def np_lambda(step, n):
    """HF "Fine-tuning LLMs to 1.58bit": lambda_ = min(training_step / 1000, 1), 1000 → n."""
    return min(step / n, 1.0)


def np_ternary(w):
    """b1.58 eq. 1–3: γ = mean|W|, W̃ = clip(round(W/γ), −1, 1)·γ (one γ per matrix)."""
    g = max(np.abs(w).mean(), 1e-5)
    return np.clip(np.round(w / g), -1, 1) * g


def np_absmax8(x):
    """b1.58 per-token absmax: s = 127 / max|x|, x̃ = clip(round(x·s), −128, 127) / s."""
    s = 127.0 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    return np.clip(np.round(x * s), -128, 127) / s


def test_the_schedule_is_min_1_step_over_n():
    for n in (1, 4, 7):
        got = [float(warmup.schedule(s, n)) for s in range(12)]
        np.testing.assert_allclose(got, [np_lambda(s, n) for s in range(12)], rtol=1e-7)
    assert float(jax.jit(warmup.schedule, static_argnums=1)(jnp.int32(3), 6)) == 0.5  # a traced step
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup.schedule(0, 0)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.7, 1.0])
def test_a_b158_layer_under_warmup_is_w_plus_lambda_q_minus_w(lam):
    """y = x̃ W̃ with W̃ = W + λ(Q(W) − W), x̃ = x + λ(Q(x) − x) (the blog's BitLinear, weights and activations)."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(16, 8)) * 0.05).astype(np.float32)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    layer = BitDense(16, 8, quant=recipes.recipe("b158").spec("q_proj"), rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(w)
    with warmup.mixing(jnp.float32(lam)):
        y = np.asarray(layer(jnp.asarray(x)))
    wt = w + lam * (np_ternary(w) - w)
    xt = x + lam * (np_absmax8(x) - x)
    np.testing.assert_allclose(y, xt @ wt, rtol=2e-5, atol=2e-6)
    if lam == 0.0:  # exactly the full-precision layer
        np.testing.assert_allclose(y, x @ w, rtol=1e-6, atol=1e-7)
    if lam == 1.0:  # exactly the layer outside any warm-up (eval, sampling, export)
        np.testing.assert_array_equal(y, np.asarray(layer(jnp.asarray(x))))


def test_the_warmup_gradient_is_the_ste_at_every_lambda():
    """d/dW Σ W̃ = (1 − λ) + λ·1 = 1 with the identity STE (the blog's `.detach()` form)."""
    w = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32))
    spec = recipes.recipe("b158").spec("q_proj")
    for lam in (0.0, 0.4, 1.0):
        with warmup.mixing(jnp.float32(lam)):
            g = jax.grad(lambda w: jnp.sum(warmup.mix(w, spec.quantize_weight(w))))(w)
        np.testing.assert_allclose(np.asarray(g), 1.0, rtol=1e-6)


def test_warmup_steps_is_validated(data_dir):
    cfg = tiny_config("b158", steps=2, data_dir=data_dir, **{"model.quant.warmup_steps": -1, "optim.warmup_steps": 0})
    with pytest.raises(Exception, match=r"config\.model\.quant\.warmup_steps=-1"):
        trainer.Setup(cfg)
    cfg = tiny_config(
        "b158",
        steps=2,
        data_dir=data_dir,
        **{"model.quant.warmup_steps": 2, "model.int8_matmul": True, "optim.warmup_steps": 0},
    )
    with pytest.raises(Exception, match=r"warmup_steps=2 is invalid: a warm-up mixes"):
        trainer.Setup(cfg)


@pytest.mark.slow
def test_lambda_0_trains_the_fp_model_and_lambda_1_the_quantized_one(data_dir):
    """At state step 0 (λ = 0) a b158 warm-up step is an fp step; at step ≥ N (λ = 1) it is a plain b158 step."""
    over = {"optim.warmup_steps": 1}
    warm = trainer.Setup(tiny_config("b158", steps=8, data_dir=data_dir, **over, **{"model.quant.warmup_steps": 4}))
    fp = trainer.Setup(tiny_config("fp", steps=8, data_dir=data_dir, **over))
    b158 = trainer.Setup(tiny_config("b158", steps=8, data_dir=data_dir, **over))
    batch = warm.train_batch(0)
    loss = lambda s, step: float(
        s.train_step({**s.init_fn(jax.random.key(0)), "step": jnp.int32(step)}, batch)[1]["train_loss"]
    )
    np.testing.assert_allclose(loss(warm, 0), loss(fp, 0), rtol=1e-6)
    assert loss(warm, 4) == loss(b158, 4) and loss(warm, 6) == loss(b158, 6)  # bitwise: (1 − 1)·W + 1·Q(W) = Q(W)
    mid = loss(warm, 2)
    assert min(loss(fp, 0), loss(b158, 4)) - 1e-3 < mid < max(loss(fp, 0), loss(b158, 4)) + 1.0


@pytest.mark.slow
def test_a_resume_in_the_middle_of_the_warmup_is_bit_exact(data_dir, tmp_path):
    cfg = tiny_config(
        "b158",
        steps=8,
        data_dir=data_dir,
        checkpoint_every=2,
        **{"model.quant.warmup_steps": 6, "optim.warmup_steps": 1},
    )
    trainer.train(cfg, str(tmp_path / "a"))
    trainer.train(cfg, str(tmp_path / "b"), stop_after=3)  # preempted at step 3, λ = 0.5
    trainer.train(cfg, str(tmp_path / "b"))
    la, lb = losses(str(tmp_path / "a")), losses(str(tmp_path / "b"))
    assert len(la) == 8 and la == lb  # bitwise


def test_a_run_saved_before_the_field_resumes_and_another_warmup_is_refused(data_dir):
    """A checkpoint whose config predates quant.warmup_steps resumes (the default 0 is no change); a saved
    warm-up that differs from the config's is refused, naming the field."""
    from bitjax import config as config_lib
    from bitjax import errors
    from bitjax.train import resume

    cfg = tiny_config("b158", steps=4, data_dir=data_dir)
    saved = config_lib.to_dict(cfg)
    del saved["model"]["quant"]["warmup_steps"]
    resume.check_compatible(cfg, {"config": saved}, "wd", None)
    saved["model"]["quant"]["warmup_steps"] = 3
    with pytest.raises(errors.UserError, match=r"config\.model\.quant\.warmup_steps: saved 3, now 0"):
        resume.check_compatible(cfg, {"config": saved}, "wd", None)
