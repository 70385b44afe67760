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

from bitjax.quant.hadamard import fwht
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
    k = max(1, math.ceil(keep * d))
    a = jnp.abs(x.astype(jnp.float32))
    if k == d:
        return jnp.ones(x.shape, bool)
    return a >= kth_largest(a, k)


def topk_absmax_act(x: jax.Array, keep: float = 0.5, bits: int = 8, rule: str = "identity") -> jax.Array:
    """BitNet a4.8 sparsified intermediate states (Wang, Ma, Wei 2024, arXiv 2411.04965, §2.1): Q_INT8(TopK(x)).

    Keep the K = ⌈keep·d⌉ largest |x| per token (K = 50% in the paper), zero the rest, then per-token
    absmax `bits`-bit quantization (eq. 1) of what is kept. Gradient (§2.2): the STE bypasses both
    the quantizer AND the top-K mask, so every entry, kept or dropped, receives the upstream
    gradient (`identity`); other rules act on u = x·s/Qp with s the kept entries' absmax scale.
    """
    qp = 2 ** (_check_bits(bits) - 1) - 1
    mask = topk_mask(x, keep)
    x32 = x.astype(jnp.float32)
    sparse = jnp.where(mask, x32, 0.0)
    s = absmax_scale(sparse, qp)  # the absmax of the kept entries is that of x
    xs = sparse * s
    q = jnp.where(mask, exact_div(jnp.clip(jnp.round(xs), -qp - 1, qp), s), 0.0).astype(x.dtype)
    return straight_through(x, q, jnp.clip(x32 * s / qp, -1, 1).astype(x.dtype), rule)


def absmean_codes(x: jax.Array, bits: int = 4):
    """BitNet a4.8 INT4 absmean codes (Wang, Ma, Wei 2024, arXiv 2411.04965, eq. 2), per token.

    β = mean|x|;  codes = RoundClip(√Qp · x/(β + ε), −Qp − 1, Qp),  Qp = 2^(b−1) − 1 (√7 for b = 4).
    Returns (codes int32 (…, d), β float32 (…, 1)); x̃ = codes · β/√Qp.
    """
    qp = 2 ** (_check_bits(bits) - 1) - 1
    x32 = x.astype(jnp.float32)
    beta = jnp.mean(jnp.abs(x32), axis=-1, keepdims=True)
    codes = jnp.clip(jnp.round(math.sqrt(qp) * x32 / (beta + EPS)), -qp - 1, qp)
    return codes.astype(jnp.int32), beta


def absmean_act(x: jax.Array, bits: int = 4, rule: str = "identity") -> jax.Array:
    """BitNet a4.8 absmean activation quantization (arXiv 2411.04965, eq. 2), per token.

    Q(x) = β/√Qp · RoundClip(√Qp · x/(β + ε), −Qp − 1, Qp), β = mean|x|, Qp = 2^(b−1) − 1.
    For b = 4 this is the paper's Q_INT4 (β/√7 · RoundClip(√7·x/(β+ε), −8, 7)), used on the inputs
    of q/k/v and gate/up, whose distributions are Gaussian-like; other b extend it with the same
    √Qp form (our generalisation, not in the paper). Gradient: `rule` on u = √Qp·x/((β+ε)·Qp),
    |u| ≤ 1 on the representable range.
    """
    qp = 2 ** (_check_bits(bits) - 1) - 1
    x32 = x.astype(jnp.float32)
    beta = jnp.mean(jnp.abs(x32), axis=-1, keepdims=True)
    xs = math.sqrt(qp) * x32 / (beta + EPS)
    q = (jnp.clip(jnp.round(xs), -qp - 1, qp) * (beta / math.sqrt(qp))).astype(x.dtype)
    return straight_through(x, q, (xs / qp).astype(x.dtype), rule)


def absmax_v1_act(x: jax.Array, bits: int = 8, granularity: str = "token", rule: str = "identity") -> jax.Array:
    """BitNet (v1) activation quantization (Wang et al., 2023, arXiv 2310.11453, eq. 4–5).

    γ = max(‖x‖∞, ε), Qb = 2^(b−1);  x̃ = RoundClip(x·Qb/γ, −Qb, Qb − 1) · γ/Qb.

    Two readings of the paper, written down:
    * Range. Eq. 4 clips to [−Qb + ε, Qb − ε] to stay inside b bits; rounding Qb − ε would give Qb,
      i.e. 2^b + 1 levels (b + 1 bits). We keep the b-bit two's-complement range [−Qb, Qb − 1]
      (256 levels for b = 8): the absmax element of a positive maximum maps to Qb − 1.
    * Granularity. The paper's γ is the absmax of "the input matrix" during training; b1.58 and every
      later BitNet use one γ per token, which also keeps a token's output independent of the other
      rows of the batch (so cached decoding equals the full forward). Default 'token'; 'tensor'
      gives the per-matrix reading (batch-dependent).
    BitNet v1 applies it after a LayerNorm without affine parameters (BitDense norm='layer').
    Gradient: `rule` on u = x/γ.
    """
    qb = 2 ** (_check_bits(bits) - 1)
    if granularity not in ("token", "tensor"):
        raise ValueError(f"absmax_v1 granularity must be 'token' or 'tensor', got {granularity!r}")
    x32 = x.astype(jnp.float32)
    axes = -1 if granularity == "token" else tuple(range(x.ndim))
    gamma = jnp.maximum(jnp.max(jnp.abs(x32), axis=axes, keepdims=True), EPS)
    q = jnp.clip(jnp.round(x32 * (qb / gamma)), -qb, qb - 1) * (gamma / qb)
    return straight_through(x, q.astype(x.dtype), (x32 / gamma).astype(x.dtype), rule)


def hadamard_absmax_act(x: jax.Array, bits: int = 8, rule: str = "identity") -> jax.Array:
    """BitNet v2's H-BitLinear input at 8 bits (Wang, Ma, Wei 2025, arXiv 2504.18415, §2): Q_INT8(H·x).

    x_r = fwht(x) (bitjax.quant.hadamard: the normalised Hadamard transform per token), then per-token
    absmax quantization (:func:`absmax_act`) of x_r. Returns x̃_r, in the rotated basis the layer's
    weight is trained in. Gradient: exact through the transform, `rule` (STE) through the rounding.
    """
    return absmax_act(fwht(x), bits, rule)


def hadamard_absmean_act(x: jax.Array, bits: int = 4, rule: str = "identity") -> jax.Array:
    """BitNet v2's H-BitLinear input at 4 bits (arXiv 2504.18415, §2): Q_INT4(H·x), Q_INT4 the absmean
    quantizer of a4.8 (:func:`absmean_act`: β/√7 · RoundClip(√7·x_r/(β + ε), −8, 7), β = mean|x_r|).
    Gradient: exact through the transform, `rule` (STE) through the rounding."""
    return absmean_act(fwht(x), bits, rule)
