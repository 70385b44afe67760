"""Activation quantizers: pure functions x (…, features) → x̃ of x's shape/dtype, per token.

"Per token" means one scale per position, over the last (feature) axis. Stats
are computed in float32 and the result cast back to x's dtype (as HF's
``ActQuant``). Each function takes ``rule`` for its gradient (see
:mod:`bitjax.quant.ste`); ``identity`` is the BitNet papers' STE.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bitjax.quant.select import kth_largest
from bitjax.quant.ste import straight_through

EPS = 1e-5


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"activation bits must be an int in [2, 16], got {bits!r}")
    return bits


def absmax_scale(x32: jax.Array, qp: int) -> jax.Array:
    """s = Qp · (1 / max(max|x|, ε)) per token, (…, 1) float32.

    Written as a reciprocal times Qp, not Qp / max: PyTorch evaluates HF's
    ``127 / x.abs().max(...)`` as ``reciprocal(max) * 127`` (two roundings), and
    the integer codes only match the reference bit for bit when s does.
    """
    return qp * (1.0 / jnp.maximum(jnp.max(jnp.abs(x32), axis=-1, keepdims=True), EPS))


def exact_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den with a true IEEE division, den broadcasting against num.

    XLA rewrites a division by a broadcast into a multiply by the reciprocal,
    which is 1 ulp off torch's ``/ scale`` for ~40% of dequantized activations;
    the barrier hides the broadcast from that rewrite.
    """
    return num / jax.lax.optimization_barrier(jnp.broadcast_to(den, num.shape))


def absmax_codes(x: jax.Array, bits: int = 8):
    """Per-token absmax codes (BitNet b1.58 / HF ``ActQuant``; BitNet eq. 4 with Qp = 2^(b−1) − 1).

    s = Qp / max(max|x|, ε);  codes = clip(round(x·s), −2^(b−1), Qp).
    Returns (codes int32 (…, d), s float32 (…, 1)); x̃ = codes / s.
    """
    qp = 2 ** (_check_bits(bits) - 1) - 1
    x32 = x.astype(jnp.float32)
    s = absmax_scale(x32, qp)
    return jnp.clip(jnp.round(x32 * s), -qp - 1, qp).astype(jnp.int32), s


def absmax_act(x: jax.Array, bits: int = 8, rule: str = "identity") -> jax.Array:
    """Per-token absmax b-bit fake quantization (BitNet b1.58; BitNet a4.8 eq. 1 for b=4, 8).

    s = (2^(b−1) − 1) / max(max|x|, 1e-5);  x̃ = clip(round(x·s), −2^(b−1), 2^(b−1) − 1) / s.
    Equals HF transformers' ``ActQuant`` for bits=8 bit for bit, eager or jitted
    (checked against torch 2.13 on CPU): the scale is formed as torch forms it
    (:func:`absmax_scale`) and the division is a true division (:func:`exact_div`).
    Gradient: `rule` on u = x/max|x| ∈ [−1, 1] (clipped STE passes everything).
    """
    qp = 2 ** (_check_bits(bits) - 1) - 1
    x32 = x.astype(jnp.float32)
    s = absmax_scale(x32, qp)
    xs = x32 * s
    q = exact_div(jnp.clip(jnp.round(xs), -qp - 1, qp), s).astype(x.dtype)
    # clip: x·s/Qp can exceed 1 by an ulp, which would wrongly mask the absmax element
    return straight_through(x, q, jnp.clip(xs / qp, -1, 1).astype(x.dtype), rule)


def topk_mask(x: jax.Array, keep: float) -> jax.Array:
    """True for the K = ⌈keep·d⌉ largest |x| of each token (ties at the K-th value are kept)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"top-K keep fraction must be in (0, 1], got {keep}")
    d = x.shape[-1]
    k = max(1, int(math.ceil(keep * d)))
    a = jnp.abs(x.astype(jnp.float32))
    if k == d:
        return jnp.ones(x.shape, bool)
    return a >= kth_largest(a, k)


def topk_absmax_act(x: jax.Array, keep: float = 0.5, bits: int = 8, rule: str = "identity") -> jax.Array:
    """BitNet a4.8 sparsified intermediate states (Wang et al., 2024, eq. 3): Q_INT8(TopK(x)).

    Keep the K = ⌈keep·d⌉ largest |x| per token, zero the rest, then per-token
    absmax `bits`-bit quantization of what is kept. Gradient: through the kept
    entries only (d TopK(x)/dx = mask), with `rule` for the rounding.
    """
    mask = topk_mask(x, keep)
    sparse = jnp.where(mask, x, jnp.zeros_like(x))
    return absmax_act(sparse, bits, rule)


def absmax_v1_act(x: jax.Array, bits: int = 8, rule: str = "identity") -> jax.Array:
    """BitNet (v1) activation quantization (Wang et al., 2023, eq. 4–5).

    γ = max(‖x‖∞, ε) per token, Qb = 2^(b−1);
    x̃ = round(Clip(x·Qb/γ, −Qb + ε, Qb − ε)) · γ/Qb.
    Note the v1 range uses Qb (not Qb − 1), so the extreme value rounds to ±Qb:
    2^b + 1 levels, exactly as the equation is written (b1.58 later moved to
    [−Qb, Qb − 1]; use :func:`absmax_act` for that). BitNet v1 applies it after
    a LayerNorm (the layer's ``norm='layer'``). Gradient: `rule` on u = x/γ.
    """
    qb = 2 ** (_check_bits(bits) - 1)
    x32 = x.astype(jnp.float32)
    gamma = jnp.maximum(jnp.max(jnp.abs(x32), axis=-1, keepdims=True), EPS)
    q = jnp.round(jnp.clip(x32 * (qb / gamma), -qb + EPS, qb - EPS)) * (gamma / qb)
    return straight_through(x, q.astype(x.dtype), (x32 / gamma).astype(x.dtype), rule)
