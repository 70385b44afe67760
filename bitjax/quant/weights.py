"""Weight quantizers: pure functions  W (…, in, out) → dequantized W̃ of W's shape/dtype.

Conventions
-----------
* Kernels are Flax-style ``(…, in_features, out_features)``; the last axis is the
  output channel ("column" in FBI-LLM / Bi-Mamba, "row" of PyTorch's (out, in)
  weight). Leading axes (e.g. stacked layers) are independent matrices.
* ``granularity`` picks what one scale covers: ``"tensor"`` (each matrix),
  ``"channel"`` (each output channel, reduced over the input axis) or an int /
  ``"group<N>"`` (N consecutive input features of one output channel).
* Statistics are computed in float32 whatever the input dtype; the result is
  cast back to W's dtype (as HF transformers' ``WeightQuant`` does).
* Every function takes ``rule`` (see :mod:`bitjax.quant.ste`) for its gradient.
* ``*_codes`` functions return the integer codes and scales that packing and
  export use; the fake-quant function is always ``codes · scale`` of them, so
  a formula lives in exactly one place.
* sign(0) := +1 everywhere (documented choice; a zero weight must map to ±β).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bitjax.quant.select import kth_largest
from bitjax.quant.ste import straight_through

EPS = 1e-5  # the clamp used by BitNet b1.58 / HF for mean|W| and max|x|


# ----------------------------------------------------------------------------- helpers
def parse_granularity(granularity) -> str | int:
    """'tensor' | 'channel' | int group size (also accepts 'group128')."""
    if isinstance(granularity, int) and not isinstance(granularity, bool) and granularity > 0:
        return granularity
    if granularity in ("tensor", "channel"):
        return granularity
    if isinstance(granularity, str) and granularity.startswith("group") and granularity[5:].isdigit():
        return int(granularity[5:])
    raise ValueError(f"granularity must be 'tensor', 'channel', a positive int or 'group<N>', "
                     f"got {granularity!r}")


def _grouped(w: jax.Array, granularity):
    """Reshape W so one scale covers `axes`; returns (wg, axes, unreshape)."""
    g = parse_granularity(granularity)
    if w.ndim < 2:
        raise ValueError(f"weight quantizers expect a (..., in, out) kernel, got shape {w.shape}")
    if g == "tensor":
        return w, (-2, -1), lambda y: y
    if g == "channel":
        return w, (-2,), lambda y: y
    *lead, n_in, n_out = w.shape
    if n_in % g:
        raise ValueError(f"group size {g} does not divide the input dim {n_in} of a weight "
                         f"of shape {w.shape}; pick a group size that divides it")
    wg = w.reshape(*lead, n_in // g, g, n_out)
    return wg, (-2,), lambda y: y.reshape(w.shape)


def sign(x: jax.Array) -> jax.Array:
    """sign with sign(0) = +1 (so binary codes are always ±1)."""
    return jnp.where(x >= 0, 1, -1).astype(x.dtype)


# ----------------------------------------------------------------------------- BitNet b1.58
def ternary_absmean_codes(w: jax.Array, granularity="tensor"):
    """BitNet b1.58 codes (Ma et al., 2024, "The Era of 1-bit LLMs", eq. 1–3).

    γ = max(mean|W|, ε);  codes = clip(round(W·(1/γ)), −1, 1) ∈ {−1, 0, 1}.

    Computed exactly as HF transformers' ``WeightQuant``: float32, multiply by
    the reciprocal 1/γ, round half to even, clamp. Returns (codes int8 of W's
    shape, γ float32 broadcastable to W).
    """
    wg, axes, back = _grouped(w.astype(jnp.float32), granularity)
    inv = 1.0 / jnp.maximum(jnp.mean(jnp.abs(wg), axis=axes, keepdims=True), EPS)
    codes = jnp.clip(jnp.round(wg * inv), -1, 1)
    return back(codes).astype(jnp.int8), _scale_back(1.0 / inv, w, granularity)


def ternary_absmean(w: jax.Array, granularity="tensor", rule: str = "identity") -> jax.Array:
    """BitNet b1.58 ternary weights: W̃ = clip(round(W/γ), −1, 1)·γ, γ = max(mean|W|, 1e-5).

    Equals HF transformers' ``WeightQuant.forward`` value for value (the
    division by 1/γ mirrors its ``/ scale``), up to the float32 summation order
    of mean|W| (XLA, torch and numpy each reduce in their own order: γ may
    differ in the last ulp, the codes do not except at exact rounding ties). Gradient: `rule` on u = W/γ
    (identity = the paper's STE). W̃ ∈ {−γ, 0, γ}.
    """
    wg, axes, back = _grouped(w.astype(jnp.float32), granularity)
    inv = 1.0 / jnp.maximum(jnp.mean(jnp.abs(wg), axis=axes, keepdims=True), EPS)
    u = wg * inv
    q = back(jnp.clip(jnp.round(u), -1, 1) / inv).astype(w.dtype)
    return straight_through(w, q, back(u).astype(w.dtype), rule)


def _scale_back(scale, w, granularity):
    """Scale of a grouped stat, reshaped so that it broadcasts against W."""
    g = parse_granularity(granularity)
    if isinstance(g, int):  # (…, in/g, 1, out) → (…, in, out) by repetition
        return jnp.repeat(scale, g, axis=-2).reshape(w.shape)
    return scale


# ----------------------------------------------------------------------------- BitNet (1-bit)
def binary_mean_codes(w: jax.Array, granularity="tensor"):
    """BitNet codes (Wang et al., 2023, "BitNet", eq. 1–3).

    α = mean(W);  codes = sign(W − α) ∈ {−1, +1};  β = mean|W|.
    Returns (codes int8, β float32 broadcastable to W).
    """
    wg, axes, back = _grouped(w.astype(jnp.float32), granularity)
    alpha = jnp.mean(wg, axis=axes, keepdims=True)
    beta = jnp.mean(jnp.abs(wg), axis=axes, keepdims=True)
    return back(sign(wg - alpha)).astype(jnp.int8), _scale_back(beta, w, granularity)


def binary_mean(w: jax.Array, granularity="tensor", rule: str = "identity") -> jax.Array:
    """BitNet 1-bit weights: W̃ = sign(W − α)·β, α = mean(W), β = mean|W| (BitNet eq. 1–3, 8).

    The paper folds β into the output rescale (eq. 8); multiplying it into the
    weight is the same product. sign(0) = +1. Gradient: `rule` on u = (W−α)/β.
    """
    wg, axes, back = _grouped(w.astype(jnp.float32), granularity)
    centered = wg - jnp.mean(wg, axis=axes, keepdims=True)
    beta = jnp.mean(jnp.abs(wg), axis=axes, keepdims=True)
    q = back(sign(centered) * beta).astype(w.dtype)
    u = back(centered / jnp.maximum(beta, EPS)).astype(w.dtype)
    return straight_through(w, q, u, rule)


# ----------------------------------------------------------------------------- FBI-LLM / Bi-Mamba
def fbi_init(w: jax.Array):
    """Initial column scales for :func:`fbi_sign`: β_j = mean_i W_ij, α_j = mean_i |W_ij − β_j|.

    The least-squares-style init of FBI-LLM (Ma et al., 2024, §3.1) and
    Bi-Mamba (Tang et al., 2024, eq. 4); both then learn α, β. Shapes (…, out).
    """
    w = w.astype(jnp.float32)
    beta = jnp.mean(w, axis=-2)
    alpha = jnp.mean(jnp.abs(w - beta[..., None, :]), axis=-2)
    return {"alpha": alpha, "beta": beta}


def fbi_sign(w: jax.Array, alpha: jax.Array, beta: jax.Array, rule: str = "identity") -> jax.Array:
    """FBI-LLM / Bi-Mamba binarization: W̃_{:,j} = α_j · sign(W_{:,j}) + β_j.

    FBI-LLM (Ma et al., 2024, eq. 2–3); Bi-Mamba (Tang et al., 2024, eq. 3–4).
    α, β: learnable, shape (…, out) (per output feature). sign has the STE
    `rule` on u = W; α and β get exact gradients. Result in W's dtype.
    """
    s = straight_through(w, sign(w), w, rule)
    return (alpha.astype(w.dtype)[..., None, :] * s + beta.astype(w.dtype)[..., None, :])


# ----------------------------------------------------------------------------- OneBit
def onebit_init(w: jax.Array):
    """OneBit's SVID init (Xu et al., 2024, eq. 8–9): |W| ≈ a bᵀ (rank-1 SVD).

    For a kernel (in, out): g = a·√σ₁ (input side, shape (in,)), h = b·√σ₁
    (output side, (out,)), signs chosen so both are non-negative. 2-D only.
    """
    if w.ndim != 2:
        raise ValueError(f"onebit_init expects a 2-D kernel, got shape {w.shape}")
    u, s, vt = jnp.linalg.svd(jnp.abs(w.astype(jnp.float32)), full_matrices=False)
    a, b = u[:, 0], vt[0]
    flip = jnp.where(jnp.sum(a) < 0, -1.0, 1.0)  # |W| ≥ 0 so the top pair is one-signed
    root = jnp.sqrt(s[0])
    return {"g": flip * a * root, "h": flip * b * root}


def onebit(w: jax.Array, g: jax.Array, h: jax.Array, rule: str = "identity") -> jax.Array:
    """OneBit (Xu et al., 2024, eq. 6–7): W̃ = sign(W) ⊙ (g hᵀ).

    In PyTorch form Y = [(X ⊙ gᵀ) W_±1ᵀ] ⊙ hᵀ with g on the input side (in,)
    and h on the output side (out,); here W̃_io = g_i · sign(W_io) · h_o.
    """
    s = straight_through(w, sign(w), w, rule)
    return g.astype(w.dtype)[:, None] * s * h.astype(w.dtype)[None, :]


# ----------------------------------------------------------------------------- round-to-nearest
def rtn_grid(bits: int) -> int:
    """maxq = 2^k − 1: the k-bit grid is the integers 0..maxq (k = 2..8)."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"rtn supports 2..8 bits, got {bits}")
    return 2 ** bits - 1


def rtn_scale(w32: jax.Array, maxq: int, axis, sym: bool = False):
    """(scale, zero) of GPTQ's min-max ``Quantizer.find_params`` over `axis` (kept as size 1).

    IST-DASLab/gptq, quant.py: the range always contains 0,
        xmin = min(min W, 0),  xmax = max(max W, 0);
    sym: xmax = max(|xmin|, xmax), and xmin = −xmax where xmin < 0 (an all-non-negative group keeps
    xmin = 0, as the reference does);  both 0 → xmin = −1, xmax = +1;
        scale = (xmax − xmin)/maxq,  zero = round(−xmin/scale)  (sym: zero = (maxq + 1)/2).
    Both float32.
    """
    xmin = jnp.minimum(jnp.min(w32, axis=axis, keepdims=True), 0.0)
    xmax = jnp.maximum(jnp.max(w32, axis=axis, keepdims=True), 0.0)
    if sym:
        xmax = jnp.maximum(jnp.abs(xmin), xmax)
        xmin = jnp.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = jnp.where(both0, -1.0, xmin)
    xmax = jnp.where(both0, 1.0, xmax)
    # a true division (XLA would multiply by a rounded 1/maxq): ties in rtn_round depend on it
    scale = (xmax - xmin) / jax.lax.optimization_barrier(jnp.full_like(xmax, maxq))
    zero = jnp.full_like(scale, (maxq + 1) / 2) if sym else jnp.round(-xmin / scale)
    return scale, zero


def rtn_round(w32: jax.Array, scale: jax.Array, zero: jax.Array, maxq: int) -> jax.Array:
    """codes = clip(round(W/scale) + zero, 0, maxq), as float (the reference's ``quantize``).

    W/scale is a true division, as in the reference: XLA would turn a division by a broadcast scale
    into a multiplication by 1/scale, which moves the exact rounding ties that the symmetric grid
    always has (its most negative weight sits at W/scale = −maxq/2).
    """
    scale = jax.lax.optimization_barrier(jnp.broadcast_to(scale, w32.shape))
    return jnp.clip(jnp.round(w32 / scale) + zero, 0, maxq)


def rtn_codes(w: jax.Array, bits: int, granularity="channel", sym: bool = False):
    """k-bit min-max round-to-nearest codes: the RTN baseline and grid of GPTQ (Frantar et al., 2023).

    The reference ``Quantizer`` (IST-DASLab/gptq, quant.py; see :func:`rtn_scale`), asymmetric by
    default as in its scripts (``--sym`` off): per output channel (reduced over the input axis),
    per group of N input features, or per tensor;
        codes = clip(round(W/scale) + zero, 0, 2^k − 1),   W̃ = scale·(codes − zero).
    Returns (codes uint8 of W's shape, scale float32, zero float32), scale/zero broadcastable to W.
    """
    maxq = rtn_grid(bits)
    wg, axes, back = _grouped(w.astype(jnp.float32), granularity)
    scale, zero = rtn_scale(wg, maxq, axes, sym)
    codes = back(rtn_round(wg, scale, zero, maxq)).astype(jnp.uint8)
    return codes, _scale_back(scale, w, granularity), _scale_back(zero, w, granularity)


def rtn(w: jax.Array, bits: int = 4, granularity="channel", sym: bool = False,
        rule: str = "identity") -> jax.Array:
    """k-bit RTN: W̃ = scale·(clip(round(W/scale) + zero, 0, 2^k − 1) − zero), see :func:`rtn_codes`.

    2^k levels (rtn2 has 4: asymmetric, zero point included). Gradient: `rule` on
    u = 2(W/scale + zero)/maxq − 1, so that |u| ≤ 1 exactly on the representable range
    [scale·(0 − zero), scale·(maxq − zero)] (the clipped STE passes gradients there only).
    """
    maxq = rtn_grid(bits)
    codes, scale, zero = rtn_codes(w, bits, granularity, sym)
    w32 = w.astype(jnp.float32)
    q = (scale * (codes.astype(jnp.float32) - zero)).astype(w.dtype)
    u = (2.0 * (w32 / scale + zero) / maxq - 1.0).astype(w.dtype)
    return straight_through(w, q, u, rule)


# ----------------------------------------------------------------------------- PB-LLM
def salient_mask(w: jax.Array, frac: float) -> jax.Array:
    """True for the ⌈frac·n⌉ largest |W| of each matrix (magnitude saliency, PB-LLM §3.2)."""
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"salient fraction must be in [0, 1), got {frac}")
    a = jnp.abs(w.astype(jnp.float32))
    n = a.shape[-2] * a.shape[-1]
    k = int(math.ceil(frac * n))
    if k == 0:
        return jnp.zeros(w.shape, bool)
    kth = kth_largest(a.reshape(*a.shape[:-2], n), k)
    return a >= kth[..., None]


def pb_llm(w: jax.Array, salient_frac: float = 0.1, salient_bits: int = 8,
           rule: str = "identity") -> jax.Array:
    """PB-LLM partial binarization (Shang et al., 2023, §3.2–3.3, eq. 2).

    Salient weights (top `salient_frac` by |W|) keep `salient_bits`-bit RTN
    (per output channel); the rest are binarized per output channel with the
    optimal scale α_j = mean_{i∉S} |W_ij| (eq. 2): W̃ = α·sign(W) there.
    Gradient: `rule` on u = W/α over the binarized part, identity on the rest.
    """
    w32 = w.astype(jnp.float32)
    mask = salient_mask(w32, salient_frac)
    keep = (~mask).astype(jnp.float32)
    alpha = jnp.sum(jnp.abs(w32) * keep, axis=-2, keepdims=True) / jnp.maximum(
        jnp.sum(keep, axis=-2, keepdims=True), 1.0)
    binary = sign(w32) * alpha
    sal_codes, sal_scale = rtn_codes(w32 * mask, salient_bits, "channel")
    q = jnp.where(mask, sal_codes * sal_scale, binary).astype(w.dtype)
    u = jnp.where(mask, 0.0, w32 / jnp.maximum(alpha, EPS)).astype(w.dtype)
    return straight_through(w, q, u, rule)


# ----------------------------------------------------------------------------- BiLLM
def billm(w, h, *args, **kwargs):
    """BiLLM is post-training (Hessian-aware, GPTQ-style): see :func:`bitjax.quant.billm.billm`.

    Forwarded only so that bitjax.quant's __init__ / registry keep importing until they drop this
    name (imported lazily: bitjax.quant.billm imports gptq, which imports this module).
    """
    from bitjax.quant.billm import billm as ptq_billm
    return ptq_billm(w, h, *args, **kwargs)
