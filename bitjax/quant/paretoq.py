"""ParetoQ's weight quantizers (Liu et al. 2025, "ParetoQ: Scaling Laws in Extremely Low-bit LLM
Quantization", arXiv 2502.02631; written from its reference, facebookresearch/ParetoQ
`models/utils_quant.py` (the quantizers and their gradients) and `train.py` (the scale initialisation):
the paper's text was not at hand here, so equation numbers are not cited).

One learnable step α per output channel (the reference's `weight_clip_val`, shape (out, 1) of torch's
(out, in) weight; here (…, out) of the (…, in, out) kernel), u = W/α, and by bit width k:

    k = 1      W̃ = α·sign(W)                                         α₀ = mean_in |W|
    k = 1.58   W̃ = α·round(1.5·clip(u, ±c))/1.5     ∈ α·{−⅔, 0, ⅔}     α₀ = max_in |W|
    k = 2      W̃ = α·(round(2·clip(u, ±c) − ½) + ½)/2 ∈ α·{±¼, ±¾}    α₀ = max_in |W|
    k = 3, 4   W̃ = α·clip(round(u), −2^(k−1), 2^(k−1) − 1)  (LSQ)        α₀ = max_in |W| / (2^(k−1) − 1)

with c = 1 − 10⁻² — the "stretched elastic quant" (SEQ) for 1.58 and 2 bits, whose levels
are spread evenly over the clipped range and exclude 0 at 2 bits, and LSQ (Esser et al. 2020) for 3–4.
Gradients are the reference's custom backward, not autodiff: W gets the STE inside the clip range
(|u| ≤ c for SEQ, −2^(k−1) ≤ u ≤ 2^(k−1) − 1 for LSQ, |u| ≤ 1 at 1 bit) and zero outside; α gets LSQ's

    ∂L/∂α = g_s · Σ_in ∂L/∂W̃ · (Qn if u < lo, Qp if u > hi, W̃/α − u inside),

g_s = 1/√(numel(W)·Qp) (LSQ's gradient scale, numel of the whole matrix; Qp = 2^(k−1) − 1, 1 at 1 and
1.58 bits), and for SEQ Qp = −Qn = the largest level (1 at 1.58 bits, ¾ at 2); at 1 bit Σ_in sign(W)·g·g_s.
α below 10⁻⁵ is read as 10⁻⁵ (the reference's clamp). Departure: sign(0) = +1 (torch's sign(0) is 0), as
everywhere in bitjax.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from bitjax.quant.weights import sign

BITS = (1, 1.58, 2, 3, 4)
CLIP = 1 - 1e-2  # the reference's clip_val for SEQ
EPS = 1e-5


def _check(bits) -> float:
    if bits not in BITS:
        raise ValueError(f"ParetoQ bit width must be one of {BITS}, got {bits!r}")
    return bits


def paretoq_init(w: jax.Array, bits: float) -> dict[str, jax.Array]:
    """{'alpha': (…, out) float32}: the reference train.py's initial step from the kernel (…, in, out)."""
    a = jnp.abs(w.astype(jnp.float32))
    if _check(bits) == 1:
        alpha = jnp.mean(a, axis=-2)
    elif bits in (1.58, 2):
        alpha = jnp.max(a, axis=-2)
    else:
        alpha = jnp.max(a, axis=-2) / (2 ** (bits - 1) - 1)
    return {"alpha": alpha}


def _grid(bits):
    """(quantize u → level/α, lo, hi, Qn, Qp, LSQ's Qp for g_s) of one bit width (module docstring)."""
    if bits == 1:
        return (lambda u: sign(u)), -1.0, 1.0, -1.0, 1.0, 1.0
    if bits in (1.58, 2):
        n, shift = (1.5, 0.0) if bits == 1.58 else (2.0, 0.5)
        top = (n - shift) / n
        return (lambda u: (jnp.round(jnp.clip(u, -CLIP, CLIP) * n - shift) + shift) / n), -CLIP, CLIP, -top, top, 1.0
    qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return (lambda u: jnp.clip(jnp.round(u), qn, qp)), float(qn), float(qp), float(qn), float(qp), float(qp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _paretoq(w, alpha, bits):
    q, *_ = _grid(bits)
    a = jnp.maximum(alpha.astype(jnp.float32), EPS)[..., None, :]
    return (q(w.astype(jnp.float32) / a) * a).astype(w.dtype)


def _fwd(w, alpha, bits):
    return _paretoq(w, alpha, bits), (w, alpha)


def _bwd(bits, res, g):
    w, alpha = res
    q, lo, hi, qn, qp, lsq_qp = _grid(bits)
    a = jnp.maximum(alpha.astype(jnp.float32), EPS)[..., None, :]
    u = w.astype(jnp.float32) / a
    g32 = g.astype(jnp.float32)
    small, big = u < lo, u > hi
    inside = ~(small | big)
    scale = 1.0 / math.sqrt(w.shape[-2] * w.shape[-1] * lsq_qp)
    if bits == 1:
        da = jnp.sum(sign(w.astype(jnp.float32)) * g32, axis=-2) * scale
    else:
        step = jnp.where(small, qn, jnp.where(big, qp, q(u) - u))
        da = jnp.sum(step * g32, axis=-2) * scale
    return (jnp.where(inside, g32, 0.0).astype(w.dtype), da.astype(alpha.dtype))


_paretoq.defvjp(_fwd, _bwd)


def paretoq(w: jax.Array, alpha: jax.Array, bits: float = 2, rule: str = "identity") -> jax.Array:
    """ParetoQ's W̃ of the kernel w (…, in, out) with the learned step α (…, out) (module docstring).
    Its gradient is the reference's own (STE inside the clip range, LSQ's for α): `rule` must be
    'identity'."""
    if rule != "identity":
        raise ValueError(f"ParetoQ defines its own gradient (the reference's STE + LSQ); grad={rule!r} is not taken")
    return _paretoq(w, alpha, _check(bits))
