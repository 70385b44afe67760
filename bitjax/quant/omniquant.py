"""OmniQuant's learnable weight clipping (LWC): Shao et al., "OmniQuant: Omnidirectionally Calibrated
Quantization for Large Language Models", ICLR 2024 (arXiv 2308.13137), Eq. 2–3; reference
OpenGVLab/OmniQuant ``quantize/quantizer.py`` (UniformAffineQuantizer with lwc) and ``quantize/omniquant.py``.

Per output channel (or per group of `group_size` input rows of it), with γ, β learnable (init 4.0):

    xmax = σ(γ)·max W,   xmin = σ(β)·min W                  (the reference: no 0 forced into the range)
    h = clip((xmax − xmin)/(2^k − 1), 1e-5, 1e4),   z = round(clip(−xmin/h, −1e4, 1e4))
    W̃ = h·(clip(⌊W/h⌉ + z, 0, 2^k − 1) − z)                 ⌊·⌉ = round with the straight-through estimator

z is rounded without an STE (torch's .round(), zero gradient), so γ, β learn through h alone. Trained per
decoder block by bitjax.quant.block_recon (the FP weights frozen): AdamW, lr 1e-2, weight decay 0,
batch 1, 20 epochs at W3/W4 and 40 at W2 (the reference's scripts). LET (the learnable equivalent
transformation, Eq. 4–5) is not implemented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bitjax.quant import block_recon

INIT = 4.0  # σ(4) ≈ 0.982: the clipping starts just inside the min-max range
LR = 1e-2  # the reference's --lwc_lr
CLIPMIN = 1e-5  # the reference's floor on the step size


def round_ste(x: jax.Array) -> jax.Array:
    """round(x) forward, identity gradient (the reference's round_ste)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def clamp(x: jax.Array, lo, hi) -> jax.Array:
    """clip(x, lo, hi) with torch.clamp's gradient: 1 on [lo, hi] (bounds included), 0 outside. (jnp.clip's
    is ½ at a bound, where the rounded codes of a range's extreme weights land exactly.)"""
    return jnp.where((x >= lo) & (x <= hi), x, jnp.clip(x, lo, hi))


def groups(w: jax.Array, group_size: int | None) -> jax.Array:
    """w (in, out) → (G, g, out): G groups of g consecutive input rows (per channel: G = 1, g = in)."""
    d_in, d_out = w.shape
    g = d_in if group_size is None else group_size
    return w.reshape(d_in // g, g, d_out)


def lwc_fake_quant(w: jax.Array, gamma: jax.Array, beta: jax.Array, bits: int, group_size: int | None) -> jax.Array:
    """W̃ (in, out) of kernel w (in, out) with clipping logits gamma, beta (G, out) (see the module docstring)."""
    qmax = 2**bits - 1
    wg = groups(w.astype(jnp.float32), group_size)
    xmax = jax.nn.sigmoid(gamma)[:, None, :] * jnp.max(wg, axis=1, keepdims=True)
    xmin = jax.nn.sigmoid(beta)[:, None, :] * jnp.min(wg, axis=1, keepdims=True)
    scale = clamp((xmax - xmin) / qmax, CLIPMIN, 1e4)
    zero = jnp.round(clamp(-xmin / scale, -1e4, 1e4))
    codes = clamp(round_ste(wg / scale) + zero, 0, qmax)
    return ((codes - zero) * scale).reshape(w.shape).astype(w.dtype)


def init(params: dict, bits: int, group_size: int | None) -> dict:
    """θ = {block: {name: {'gamma', 'beta'}}}: (G, out) arrays of INIT per projection kernel."""
    theta = {}
    for block, name, w in block_recon.kernels(params):
        shape = (groups(w, group_size).shape[0], w.shape[1])
        theta.setdefault(block, {})[name] = {"gamma": jnp.full(shape, INIT), "beta": jnp.full(shape, INIT)}
    return theta


def apply(theta: dict, params: dict, bits: int, group_size: int | None) -> dict:
    """The block's parameters with each kernel fake-quantized under its learned clipping."""
    new = {}
    for block, name, w in block_recon.kernels(params):
        t = theta[block][name]
        new.setdefault(block, {})[name] = lwc_fake_quant(w, t["gamma"], t["beta"], bits, group_size)
    return block_recon.with_kernels(params, new)


def optimizer(theta: dict, total_steps: int, bits: int) -> optax.GradientTransformation:
    """AdamW(lr 1e-2, weight decay 0): torch.optim.AdamW's defaults otherwise, as the reference."""
    return optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)


METHOD = block_recon.BlockMethod(
    init=init,
    apply=apply,
    optimizer=optimizer,
    default_epochs=lambda bits: 40 if bits <= 2 else 20,
    default_batch_size=1,
)
