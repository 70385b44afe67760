"""EfficientQAT's Block-AP: Chen et al., "EfficientQAT: Efficient Quantization-Aware Training for Large
Language Models", 2024 (arXiv 2407.11062), §3.2; reference OpenGVLab/EfficientQAT ``quantize/quantizer.py``
(UniformAffineQuantizer), ``quantize/block_ap.py``, ``main_block_ap.py`` (defaults).

Per output channel (or group of `group_size` input rows), a step size s and a float zero point z,
initialised min-max (the reference: no 0 forced into the range):

    s₀ = clip((max W − min W)/(2^k − 1), 1e-4, 1e4),   z₀ = round(−clip(min W/s₀, −1e4, 1e4))
    W̃ = s'·(clip(⌊W/s'⌉ + z', 0, 2^k − 1) − z'),   s' = clip_ste(s, 1e-4, 1e4),  z' = clip_ste(⌊z⌉, 0, 2^k − 1)

⌊·⌉ round and clip_ste pass the gradient straight through (identity); the outer clip of the codes does
not (zero outside, one on the bounds, as torch.clamp). Block-AP trains, per decoder block (bitjax.quant.block_recon), ALL the block's
parameters — every kernel W and the norms, as the reference's weight_parameters() ('weight' in the name)
— together with s and z: AdamW, weight decay 0, lr 1e-4 for (s, z) and 1e-5 for the weights (2e-5 at
W2, as the reference's w2 scripts), each cosine-annealed to lr/20 over the block's steps; gradient
norm clipped at 0.3; 2 epochs, batch 2. The written W̃ is the trained W on the trained grid.
E2E-QP (§3.3: the codes and zero points frozen, the step sizes trained end to end with the language-model
loss) is the weight quantizer ``e2e_qp<k>`` (:func:`e2e_qp`), trained by the ordinary trainer from a Block-AP
output with only the step changes trainable: configs/e2e_qp.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bitjax.quant import block_recon
from bitjax.quant import weights as W
from bitjax.quant.omniquant import clamp, groups, round_ste

QUANT_LR = 1e-4  # --quant_lr: s and z
MIN_LR_FACTOR = 20  # min_lr = lr / 20 at the end of the cosine
CLIP_GRAD = 0.3


def weight_lr(bits: int) -> float:
    """--weight_lr: 1e-5 (main_block_ap.py's default, the W3/W4 scripts), 2e-5 in the W2 scripts."""
    return 2e-5 if bits <= 2 else 1e-5


def clamp_ste(x: jax.Array, lo: float, hi: float) -> jax.Array:
    """clip(x, lo, hi) forward, identity gradient (the reference's clamp_ste)."""
    return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def init_scale_zero(w: jax.Array, bits: int, group_size: int | None) -> tuple[jax.Array, jax.Array]:
    """Min-max (s, z), each (G, out), of kernel w (in, out) (see the module docstring)."""
    wg = groups(w.astype(jnp.float32), group_size)
    xmin, xmax = jnp.min(wg, axis=1), jnp.max(wg, axis=1)
    scale = jnp.clip((xmax - xmin) / (2**bits - 1), 1e-4, 1e4)
    return scale, jnp.round(-jnp.clip(xmin / scale, -1e4, 1e4))


def fake_quant(w: jax.Array, s: jax.Array, z: jax.Array, bits: int, group_size: int | None) -> jax.Array:
    """W̃ (in, out) of kernel w (in, out) on the grid of step s and zero point z (G, out)."""
    qmax = 2**bits - 1
    scale = clamp_ste(s, 1e-4, 1e4)[:, None, :]
    zero = clamp_ste(round_ste(z), 0, qmax)[:, None, :]
    codes = clamp(round_ste(groups(w.astype(jnp.float32), group_size) / scale) + zero, 0, qmax)
    return ((codes - zero) * scale).reshape(w.shape).astype(w.dtype)


def init(params: dict, bits: int, group_size: int | None, layer=None) -> dict:
    """θ = {'params': the block's parameters (all trained), 's': {block: {name}}, 'z': {block: {name}}}."""
    s, z = {}, {}
    for block, name, w in block_recon.kernels(params):
        s.setdefault(block, {})[name], z.setdefault(block, {})[name] = init_scale_zero(w, bits, group_size)
    return {"params": params, "s": s, "z": z}


def apply(theta: dict, params: dict, bits: int, group_size: int | None) -> dict:
    """θ's parameters with each kernel fake-quantized on θ's grid (`params`, the FP block, is not read)."""
    p = theta["params"]
    new = {}
    for block, name, w in block_recon.kernels(p):
        new.setdefault(block, {})[name] = fake_quant(
            w, theta["s"][block][name], theta["z"][block][name], bits, group_size
        )
    return block_recon.with_kernels(p, new)


def optimizer(theta: dict, total_steps: int, bits: int) -> optax.GradientTransformation:
    """Grad-norm clip 0.3, then AdamW (wd 0) with a cosine to lr/20: quant lr for s, z; weight lr for the rest."""

    def adamw(lr):
        schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=1 / MIN_LR_FACTOR)
        return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)

    labels = {k: jax.tree.map(lambda _, k=k: "weight" if k == "params" else "quant", v) for k, v in theta.items()}
    return optax.chain(
        optax.clip_by_global_norm(CLIP_GRAD),
        optax.multi_transform({"weight": adamw(weight_lr(bits)), "quant": adamw(QUANT_LR)}, labels),
    )


METHOD = block_recon.BlockMethod(
    init=init,
    apply=apply,
    optimizer=optimizer,
    default_epochs=lambda bits: 2,
    default_batch_size=2,
)


# ----------------------------------------------------------------------------- E2E-QP
def e2e_qp(w: jax.Array, dstep: jax.Array, bits: int, granularity="channel", rule: str = "identity") -> jax.Array:
    """EfficientQAT's E2E-QP layer (arXiv 2407.11062 §3.3; reference ``main_e2e_qp.py``, its QuantLinear
    with the integer weight and zero points frozen and only ``scales`` trainable).

    w (in, out): the kernel, Block-AP's W̃ (a `bitjax.ptq --method efficientqat` output), frozen. Its grid
    is recovered as Block-AP initialises one (:func:`init_scale_zero`, per channel or per `group<N>`):
    s₀ = (max W − min W)/(2^k − 1), z = ⌊−min W/s₀⌉, codes C = clip(⌊W/s₀⌉ + z, 0, 2^k − 1). When a
    group's codes span 0..2^k − 1 (Block-AP's min-max grid), s₀ is its trained step and C, z its codes.
    dstep (G, out): the learned change of the step size, 0 at initialisation:

        W̃ = (s₀ + Δs)·(C − z),   ∂W̃/∂Δs = C − z;   s₀, z, C constant (no gradient reaches w)

    so Δs trains as the reference's step size does (same lr; Adam is invariant to the shift by s₀),
    while the codes and zero points stay frozen. `rule` is unused (no rounding is differentiated).
    """
    del rule
    group_size = None if granularity == "channel" else W.parse_granularity(granularity)
    w = jax.lax.stop_gradient(w)
    s0, zero = init_scale_zero(w, bits, group_size)
    wg = groups(w.astype(jnp.float32), group_size)
    codes = jnp.clip(jnp.round(wg / s0[:, None, :]) + zero[:, None, :], 0, 2**bits - 1)
    step = s0 + dstep.astype(jnp.float32)
    return (step[:, None, :] * (codes - zero[:, None, :])).reshape(w.shape).astype(w.dtype)


def e2e_qp_init(w: jax.Array, bits: int, granularity="channel") -> dict:
    """{'dstep': zeros (G, out)}: independent of w, so a run started from a Block-AP output by
    config.init_from begins exactly at that output's W̃."""
    del bits
    group_size = None if granularity == "channel" else W.parse_granularity(granularity)
    return {"dstep": jnp.zeros((w.shape[0] // (group_size or w.shape[0]), w.shape[1]), jnp.float32)}
