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
  export use; the fake-quant function is always computed from them (codes · scale, or
  scale · (codes − zero) for the asymmetric RTN grid), so
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
    raise ValueError(f"granularity must be 'tensor', 'channel', a positive int or 'group<N>', got {granularity!r}")


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
        raise ValueError(
            f"group size {g} does not divide the input dim {n_in} of a weight "
            f"of shape {w.shape}; pick a group size that divides it"
        )
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
    inv = absmean_inv(wg, axes)
    codes = jnp.clip(jnp.round(wg * inv), -1, 1)
    return back(codes).astype(jnp.int8), _scale_back(1.0 / inv, w, granularity)


def absmean_inv(wg: jax.Array, axes) -> jax.Array:
    """1/γ = 1 / max(mean|W|, ε) over `axes` (keepdims), float32: the multiplier b1.58's codes use."""
    return 1.0 / jnp.maximum(jnp.mean(jnp.abs(wg), axis=axes, keepdims=True), EPS)


def ternary_absmean(w: jax.Array, granularity="tensor", rule: str = "identity") -> jax.Array:
    """BitNet b1.58 ternary weights: W̃ = clip(round(W/γ), −1, 1)·γ, γ = max(mean|W|, 1e-5).

    Equals HF transformers' ``WeightQuant.forward`` value for value (the
    division by 1/γ mirrors its ``/ scale``), up to the float32 summation order
    of mean|W| (XLA, torch and numpy each reduce in their own order: γ may
    differ in the last ulp, the codes do not except at exact rounding ties). Gradient: `rule` on u = W/γ
    (identity = the paper's STE). W̃ ∈ {−γ, 0, γ}.
    """
    wg, axes, back = _grouped(w.astype(jnp.float32), granularity)
    inv = absmean_inv(wg, axes)
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
def _fbi_axis(axis: str) -> int:
    """The kernel axis α, β run along → the axis their statistics reduce over."""
    if axis not in ("in", "out"):
        raise ValueError(f"fbi axis must be 'in' (per input feature, the papers') or 'out', got {axis!r}")
    return -1 if axis == "in" else -2


def fbi_init(w: jax.Array, axis: str = "in"):
    """Initial scales for :func:`fbi_sign` from the latent kernel w (…, in, out).

    axis='in' (FBI-LLM / Bi-Mamba): one α, β per input feature i, i.e. per column of torch's
    (out, in) weight (reference ``BinaryLinearWscales(..., 'column')``: wscale/wbias of shape
    (1, in)):  β_i = mean_o W_io,  α_i = mean_o |W_io − β_i|  (Bi-Mamba eq. 4; FBI-LLM §3.1).
    axis='out': the same per output feature (reductions over inputs), our named variant.
    Shapes (…, in) or (…, out), float32.
    """
    red = _fbi_axis(axis)
    w = w.astype(jnp.float32)
    beta = jnp.mean(w, axis=red, keepdims=True)
    alpha = jnp.mean(jnp.abs(w - beta), axis=red, keepdims=True)
    return {"alpha": jnp.squeeze(alpha, red), "beta": jnp.squeeze(beta, red)}


def fbi_sign(w: jax.Array, alpha: jax.Array, beta: jax.Array, axis: str = "in", rule: str = "identity") -> jax.Array:
    """FBI-LLM / Bi-Mamba binarization: W̃ = α ⊙ sign(W) + β (no mean subtraction inside sign).

    FBI-LLM (Ma et al., 2024, arXiv 2407.07093, eq. 2–3); Bi-Mamba (Tang et al., 2024,
    arXiv 2411.11843, eq. 3–4). axis='in': W̃_io = α_i·sign(W_io) + β_i with α, β of shape (…, in)
    (the papers' per-column scales of torch's (out, in) weight); axis='out': α, β (…, out).
    sign(0) = +1 and has the STE `rule` on u = W; α and β are learnable and get exact gradients.
    Result in W's dtype.
    """
    expand = (
        (lambda v: v.astype(w.dtype)[..., :, None])
        if _fbi_axis(axis) == -1
        else (lambda v: v.astype(w.dtype)[..., None, :])
    )
    s = straight_through(w, sign(w), w, rule)
    return expand(alpha) * s + expand(beta)


# ----------------------------------------------------------------------------- OneBit
# OneBit (Xu et al., 2024, "OneBit: Towards Extremely Low-bit Large Language Models",
# NeurIPS 2024, arXiv:2402.11295). Reference: github.com/xuyuzhuang11/OneBit @ 42d6d7b,
# layer  transformers/src/transformers/models/bitnet.py  (class BitLinear, l. 31–68),
# init   scripts/build_start_ckpt.py  (l. 21–34).
#
# The reference layer (torch weight (out, in) = kernelᵀ) computes, in this order:
#     x ← x ⊙ input_factor            (input_factor = g, shape (in,),  init 1)
#     y ← x · sign(weight)ᵀ           (sign with a tanh-shaped surrogate gradient, l. 14–23)
#     y ← y ⊙ weight_scale            (weight_scale = h, shape (out,), init 1)
#     y ← LayerNorm(y)                (nn.LayerNorm(out, elementwise_affine=False): eps 1e-5, no params)
#     y ← y + bias                    (only if bias=True; LLaMA uses bias=False everywhere)
# g ⊙ · ⊙ h commute with the matmul, so the pre-norm product equals x · W̃ with
# W̃_io = g_i · sign(W_io) · h_o (:func:`onebit`); the LayerNorm acts on the layer
# output and so belongs to the layer (:func:`onebit_layernorm` is its pure form).


def onebit_sign(w: jax.Array, rule: str = "tanh") -> jax.Array:
    """sign(W) ∈ {−1, +1} (sign(0) = +1) with OneBit's gradient.

    ``rule="tanh"`` is the reference's ``SignSTEFunc`` (bitnet.py l. 14–23):
    ∂/∂W = 1.001 − tanh(W)², i.e. the derivative of tanh plus a 1e-3 floor, on
    the raw latent W (no clipping; ≈ 1 near 0, → 0.001 for |W| ≫ 1); it and the other
    rules of :mod:`bitjax.quant.ste` act on u = W.
    """
    return straight_through(w, sign(w), w, rule)


def onebit_init(w: jax.Array):
    """OneBit's SVID value vectors (Xu et al., 2024, method section
    "Sign-Value-Independent Decomposition").

    SVID: W ≈ sign(W) ⊙ (a bᵀ) with |W| ≈ a bᵀ a rank-1 non-negative factorisation.
    For a kernel W (in, out): g (in,) goes to the input side and h (out,) to the
    output side, so W ≈ g_i · sign(W_io) · h_o. The reference
    (scripts/build_start_ckpt.py l. 21, 29–33) factorises |weight| (out, in) with
    sklearn ``NMF(n_components=1, init='random', random_state=0)``:
    ``weight_scale`` (= h) ← the (out, 1) factor, ``input_factor`` (= g) ← the (1, in) factor.

    Here the factorisation is the rank-1 truncated SVD of |W|: |W| ≥ 0, so by
    Perron–Frobenius its top singular pair can be taken non-negative and σ₁ u vᵀ
    is the best rank-1 approximation of all, hence also the optimum that rank-1
    NMF converges to — the product g hᵀ is the same; only the (arbitrary,
    init-dependent) split of the scale between g and h differs. We split it
    evenly (g = √σ₁·u, h = √σ₁·v), deterministic and without sklearn.
    Returns {"g": (in,), "h": (out,)} float32. 2-D only.

    Not included: the reference also resets the latent kernel to 0.01·sign(W)
    (build_start_ckpt.py l. 34), see :func:`onebit_latent_init`.
    """
    if w.ndim != 2:
        raise ValueError(f"onebit_init expects a 2-D kernel, got shape {w.shape}")
    u, s, vt = jnp.linalg.svd(jnp.abs(w.astype(jnp.float32)), full_matrices=False)
    a, b = u[:, 0], vt[0]
    flip = jnp.where(jnp.sum(a) < 0, -1.0, 1.0)  # |W| ≥ 0 so the top pair is one-signed
    root = jnp.sqrt(s[0])
    # |·| only removes round-off signs of entries that are ≈ 0 in a one-signed vector.
    return {"g": jnp.abs(flip * a * root), "h": jnp.abs(flip * b * root)}


def onebit_latent_init(w: jax.Array, scale: float = 0.01) -> jax.Array:
    """The latent kernel OneBit starts distillation from: scale · sign(W) (W's shape and dtype).

    scripts/build_start_ckpt.py l. 34: ``weight = sign(A) · 0.01`` for the teacher's
    weight A; only the sign of the teacher survives (its magnitudes went to g, h
    via :func:`onebit_init`), and the small latent keeps weights near the sign
    boundary, where the tanh surrogate gradient (:func:`onebit_sign`) is ≈ 1.
    (torch.sign(0) = 0 there; here sign(0) = +1.)
    """
    return (scale * sign(w.astype(jnp.float32))).astype(w.dtype)


def onebit(w: jax.Array, g: jax.Array, h: jax.Array, rule: str = "identity") -> jax.Array:
    """OneBit weight (Xu et al., 2024, "1-bit Linear Layer Architecture"): W̃_io = g_i·sign(W_io)·h_o.

    The paper's layer is Y = LayerNorm([(X ⊙ gᵀ) W_±1ᵀ] ⊙ hᵀ) (reference
    bitnet.py l. 58–68); X · W̃ is the bracket, so the caller (the layer) must
    apply :func:`onebit_layernorm` to the matmul output and add any bias after it.
    g: (in,), h: (out,), learnable (exact gradients). sign's gradient: `rule`;
    ``"tanh"`` is the reference's 1.001 − tanh(W)² (:func:`onebit_sign`), the
    :mod:`bitjax.quant.ste` rules act on u = W. Result in W's dtype.
    """
    s = onebit_sign(w, rule)
    return g.astype(w.dtype)[:, None] * s * h.astype(w.dtype)[None, :]


def onebit_layernorm(y: jax.Array, eps: float = 1e-5) -> jax.Array:
    """OneBit's output norm: (y − mean) / √(var + eps) over the last (output) axis, no affine.

    torch ``nn.LayerNorm(out_features, elementwise_affine=False)`` (bitnet.py l. 47,
    applied at l. 64, after the h scaling and before the bias): biased variance,
    eps = 1e-5, no scale/bias parameters. Statistics in float32, result in y's dtype.
    """
    y32 = y.astype(jnp.float32)
    mean = jnp.mean(y32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(y32 - mean), axis=-1, keepdims=True)
    return ((y32 - mean) * jax.lax.rsqrt(var + eps)).astype(y.dtype)


# ----------------------------------------------------------------------------- round-to-nearest
def rtn_grid(bits: int) -> int:
    """maxq = 2^k − 1: the k-bit grid is the integers 0..maxq (k = 2..8)."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"rtn supports 2..8 bits, got {bits}")
    return 2**bits - 1


def minmax_range(w32: jax.Array, axis) -> tuple[jax.Array, jax.Array]:
    """(xmin, xmax) of GPTQ's min-max grid over `axis` (kept as size 1), float32.

    IST-DASLab/gptq, quant.py ``Quantizer.find_params``: the range always contains 0,
        xmin = min(min W, 0),  xmax = max(max W, 0);  both 0 → xmin = −1, xmax = +1.
    RTN/GPTQ (:func:`rtn_scale`) and PB-LLM's salient grid (:func:`pb_llm_high`) both start from it.
    """
    xmin = jnp.minimum(jnp.min(w32, axis=axis, keepdims=True), 0.0)
    xmax = jnp.maximum(jnp.max(w32, axis=axis, keepdims=True), 0.0)
    both0 = (xmin == 0) & (xmax == 0)
    return jnp.where(both0, -1.0, xmin), jnp.where(both0, 1.0, xmax)


def rtn_scale(w32: jax.Array, maxq: int, axis, sym: bool = False):
    """(scale, zero) of GPTQ's min-max ``Quantizer.find_params`` over `axis` (kept as size 1).

    IST-DASLab/gptq, quant.py: the range always contains 0,
        xmin = min(min W, 0),  xmax = max(max W, 0);
    sym: xmax = max(|xmin|, xmax), and xmin = −xmax where xmin < 0 (an all-non-negative group keeps
    xmin = 0, as the reference does);  both 0 → xmin = −1, xmax = +1;
        scale = (xmax − xmin)/maxq,  zero = round(−xmin/scale)  (sym: zero = (maxq + 1)/2).
    Both float32.
    """
    xmin, xmax = minmax_range(w32, axis)
    if sym:  # (the both-0 fallback, −1 and +1, is already symmetric)
        xmax = jnp.maximum(jnp.abs(xmin), xmax)
        xmin = jnp.where(xmin < 0, -xmax, xmin)
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


def rtn(w: jax.Array, bits: int = 4, granularity="channel", sym: bool = False, rule: str = "identity") -> jax.Array:
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
# PB-LLM (Shang, Yuan, Wu & Dong, 2023, "PB-LLM: Partially Binarized Large Language
# Models", arXiv:2310.00034). Reference: github.com/hahnyuan/PB-LLM @ fe85da9,
# QAT layer  quant/outlier_quantizer.py  (BinaryXnorExceptOutliersLinear, l. 33–106),
# sign STE   quant/quantizer.py l. 18–25,  driver  qat/run_qat.py l. 99–106,
# 8-bit grid gptq_pb/high_quant.py l. 6–8, 29–67 (HighQuantizer, as run.py l. 132–137 builds it).
#
# QAT in the reference: ONCE, before training (run_qat.py l. 104–106 → gen_outlier_mask):
#   mask  = the outlier_fraction/2 most negative and most positive weights of the
#           matrix (value tails, per tensor, l. 57–69);
#   W     ← its 8-bit quantization (l. 75); salient entries are thereafter detached
#           (train_outlier=False, l. 96–98), i.e. frozen at their 8-bit values.
# EVERY step: α = mean|W| over the non-salient entries of the matrix (one scalar,
#   detached, l. 90–93); W̃ = where(mask, W, α·sign(W)) (l. 95, 98) with the plain
#   STE through sign (quantizer.py l. 24–25), so ∂W̃/∂W = α off the mask, 0 on it.
# Here the once-only state is {mask, salient} from :func:`pb_llm_init`, kept by the
# layer as non-trainable variables, and :func:`pb_llm` applies it. Deviations, each
# deliberate: (1) the 8-bit grid is the reference's PTQ HighQuantizer, not the QAT
# ``weight_quant_8bit`` whose zero point is broken (see :func:`pb_llm_high`);
# (2) the latent kernel is NOT overwritten by its 8-bit version (reference l. 75):
# the frozen values live in `salient`, so the kernel's salient entries are never
# read (weight decay on them is harmless) and the binarized part starts from sign(W)
# rather than sign(Q8(W)) (they differ only where Q8 rounds to 0, which torch.sign
# would binarize to 0); (3) sign(0) = +1.


def salient_mask(w: jax.Array, frac: float, criterion: str = "magnitude") -> jax.Array:
    """PB-LLM's salient-weight mask, per matrix (…, in, out) → bool of W's shape.

    criterion:
      ``"magnitude"`` — the ⌈frac·n⌉ largest |W| of each matrix (ties at the
        threshold included): the paper's magnitude saliency (also the reference
        PTQ's ``salient_metric=magnitude``, gptq_pb/gptq.py l. 87–92, which takes
        it per 128-column block instead of per matrix).
      ``"tails"`` — exactly the reference QAT's selection (outlier_quantizer.py
        l. 57–69): with n entries and torch's 1-based ``kthvalue``,
        lo = kthvalue(W, int(n·frac/2)), hi = kthvalue(W, int(n·(1 − frac/2))),
        mask = (W < lo) | (W > hi): the frac/2 most negative and frac/2 most
        positive weights (one fewer below, by the strict <). Equals
        ``"magnitude"`` for a symmetric weight distribution. A 0 rank (tiny n·frac)
        selects nothing on that side (torch's kthvalue would raise).
    Computed once, at init, from the pretrained W; the layer keeps it.
    """
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"salient fraction must be in [0, 1), got {frac}")
    w32 = w.astype(jnp.float32)
    n = w32.shape[-2] * w32.shape[-1]
    if criterion == "magnitude":
        a = jnp.abs(w32)
        k = math.ceil(frac * n)
        if k == 0:
            return jnp.zeros(w.shape, bool)
        kth = kth_largest(a.reshape(*a.shape[:-2], n), k)
        return a >= kth[..., None]
    if criterion == "tails":
        srt = jnp.sort(w32.reshape(*w32.shape[:-2], n), axis=-1)[..., None]  # (…, n, 1)
        k_lo, k_hi = int(n * frac / 2), int(n * (1 - frac / 2))
        lo = srt[..., k_lo - 1, :] if k_lo >= 1 else jnp.full(srt.shape[:-2] + (1,), -jnp.inf)
        hi = srt[..., k_hi - 1, :] if k_hi >= 1 else jnp.full(srt.shape[:-2] + (1,), jnp.inf)
        return (w32 < lo[..., None]) | (w32 > hi[..., None])
    raise ValueError(f"unknown salient criterion {criterion!r}; choose 'magnitude' or 'tails'")


def pb_llm_high(w: jax.Array, bits: int = 8) -> jax.Array:
    """The reference's high-bit quantizer for salient weights, per output channel (fake-quant).

    gptq_pb/high_quant.py ``HighQuantizer(bits, perchannel=True, sym=False)``
    (l. 29–67, quantize l. 6–8), one grid per output channel (kernel column,
    torch row) over all its input features:
      x_min = min(min W, 0), x_max = max(max W, 0)  (both 0 → −1, +1);
      s = (x_max − x_min)/(2^b − 1);  z = round(−x_min/s);
      W̃ = s·(clip(round(W/s) + z, 0, 2^b − 1) − z).
    The QAT code's ``weight_quant_8bit`` (outlier_quantizer.py l. 10–29) means the
    same asymmetric per-row 8-bit min–max grid but rounds the zero point in
    weight units (round(min W), not round(−min/s)) and casts to uint8 before
    clamping, which wraps or saturates negative codes (a bug for rows with
    |min| < 0.5); we use the PTQ quantizer it approximates. Float32 result.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"salient bits must be in 2..16, got {bits}")
    w32 = w.astype(jnp.float32)
    maxq = 2.0**bits - 1
    xmin, xmax = minmax_range(w32, -2)
    # XLA may turn these divisions into multiplications by a reciprocal (rtn_scale's true divisions
    # differ from them in the last ulp of s): kept as they are, so PB-LLM's salient values do not move
    s = (xmax - xmin) / maxq
    z = jnp.round(-xmin / s)
    return s * (jnp.clip(jnp.round(w32 / s) + z, 0, maxq) - z)


def pb_llm_init(w: jax.Array, salient_frac: float = 0.1, salient_bits: int = 8, criterion: str = "tails") -> dict:
    """PB-LLM's frozen state, computed ONCE from the pretrained kernel: {"mask", "salient"}.

    mask: bool (…, in, out), :func:`salient_mask` (default: the reference QAT's
      ``"tails"``, outlier_quantizer.py l. 57–69);
    salient: float32 (…, in, out), the `salient_bits` quantization
      (:func:`pb_llm_high`) of W on the mask, 0 elsewhere — the values the
      salient weights keep for the whole of QAT (the paper's QAT freezes the
      salient weights; reference: outlier_quantizer.py l. 75 + the detach at l. 96–97).
    Both are non-trainable layer state (not parameters): never updated by the optimizer.
    """
    mask = salient_mask(w, salient_frac, criterion)
    return {"mask": mask, "salient": jnp.where(mask, pb_llm_high(w, salient_bits), 0.0)}


def pb_llm(
    w: jax.Array,
    mask: jax.Array | None = None,
    salient: jax.Array | None = None,
    *,
    salient_frac: float = 0.1,
    salient_bits: int = 8,
    criterion: str = "tails",
    rule: str = "identity",
) -> jax.Array:
    """PB-LLM partially binarized weight for QAT, given the frozen (mask, salient) state.

    W̃ = salient             on the mask (frozen, zero gradient to W there),
    W̃ = α · sign(W)         elsewhere, α = mean_{(i,o) ∉ mask} |W_io| — ONE scalar
                            per matrix, recomputed from the current W each call and
                            treated as a constant (reference l. 90–93, ``.detach()``);
    ∂W̃/∂W = α · r'(W/α) off the mask (the reference's plain STE through sign, then
    × α: quantizer.py l. 18–25, outlier_quantizer.py l. 95; ``rule="identity"`` is
    the reference), 0 on it. sign(0) = +1 (torch.sign(0) = 0 in the reference).

    mask, salient: from :func:`pb_llm_init` on the pretrained W, stored by the layer.
    If both are None they are derived from the current W on the fly (stop-gradient)
    with `salient_frac`, `salient_bits`, `criterion`: this keeps a stateless caller
    working but is NOT PB-LLM's QAT (the mask and 8-bit values would follow W).
    If only `salient` is None, the salient entries take the 8-bit W of this call.
    Result in W's dtype.
    """
    if mask is None:
        if salient is not None:
            raise ValueError("pb_llm: `salient` given without its `mask`")
        state = pb_llm_init(jax.lax.stop_gradient(w), salient_frac, salient_bits, criterion)
        mask, salient = state["mask"], state["salient"]
    elif salient is None:
        salient = pb_llm_high(jax.lax.stop_gradient(w), salient_bits)
    if mask.shape != w.shape or (salient.shape != w.shape):
        raise ValueError(
            f"pb_llm: mask {mask.shape} and salient {salient.shape} must have the kernel's shape {w.shape}"
        )
    mask = mask.astype(bool)
    w32 = jax.lax.stop_gradient(w.astype(jnp.float32))
    keep = (~mask).astype(jnp.float32)
    alpha = jnp.sum(jnp.abs(w32) * keep, axis=(-2, -1), keepdims=True) / jnp.maximum(
        jnp.sum(keep, axis=(-2, -1), keepdims=True), 1.0
    )
    u = (w32 / jnp.maximum(alpha, EPS)).astype(w.dtype)
    binary = alpha.astype(w.dtype) * straight_through(w, sign(w), u, rule)
    return jnp.where(mask, jax.lax.stop_gradient(salient).astype(w.dtype), binary)
