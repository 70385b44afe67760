"""Gradual quantization warm-up: W̃ = W + λ(Q(W) − W), x̃ = x + λ(Q(x) − x), λ: 0 → 1.

HF's "Fine-tuning LLMs to 1.58bit: extreme quantization made easy" (2024) converts a pretrained model
to BitNet b1.58 by fading the quantizers in over the first steps of fine-tuning, weights and activations
alike (its BitLinear: ``x_quant = x + lambda_ * (activation_quant(x) - x).detach()``, the same for w),
with ``lambda_ = min(training_step / 1000, 1)``: an abrupt switch loses the pretrained model's
information (its loss starts as high as from random weights). Here

    λ(step) = min(1, step / warmup_steps)                     (config.model.quant.warmup_steps)

from the train state's step (the step being trained, 0-based), so a resumed run sees the same λ at every
step as an uninterrupted one. The mix is written (1 − λ)·x + λ·Q(x): the same value as x + λ(Q(x) − x),
exactly x at λ = 0 and exactly Q(x) at λ = 1 (so a run past its warm-up computes what one without it
does). Its gradient is (1 − λ) + λ·r'(u), r' the quantizer's gradient rule (bitjax.quant.ste): for the
plain STE the blog's identity, for other rules their derivative faded in with the forward value.

λ is handed to the layers by :func:`mixing` for the extent of a trace (the trainer's train step, around
the student's forward only: a distillation teacher is never mixed). Outside it (eval, sampling, export,
PTQ) every layer is fully quantized, λ = 1: what is evaluated is the model as it will be deployed.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

# λ while a train step is traced under `mixing`; None (= fully quantized) otherwise. A ContextVar set for the
# extent of a `with` block, as bitjax.nn.sharding's rules: no state outlives the trace.
_LAMBDA: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar("bitjax_quant_lambda", default=None)


def schedule(step, warmup_steps: int) -> jax.Array:
    """λ = min(1, step / warmup_steps), float32 (warmup_steps > 0; step an int or a traced int array)."""
    if warmup_steps <= 0:
        raise ValueError(f"warmup_steps={warmup_steps} must be > 0 for a warm-up schedule")
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(warmup_steps))


@contextlib.contextmanager
def mixing(lam):
    """Within the block, :func:`mix` fades each quantizer in by `lam` (None: no warm-up, fully quantized)."""
    token = _LAMBDA.set(lam)
    try:
        yield
    finally:
        _LAMBDA.reset(token)


def mix(x: jax.Array, q: jax.Array) -> jax.Array:
    """(1 − λ)·x + λ·q under :func:`mixing` (λ cast to x's dtype), else q itself. x, q: same shape."""
    lam = _LAMBDA.get()
    if lam is None:
        return q
    lam = jnp.asarray(lam).astype(x.dtype)
    return (1 - lam) * x + lam * q.astype(x.dtype)
