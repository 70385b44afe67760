"""OmniQuant's learnable weight clipping (LWC): Shao et al., "OmniQuant: Omnidirectionally Calibrated
Quantization for Large Language Models", ICLR 2024 (arXiv 2308.13137), Eq. 2–3; reference
OpenGVLab/OmniQuant ``quantize/quantizer.py`` (UniformAffineQuantizer with lwc) and ``quantize/omniquant.py``.

Per output channel (or per group of `group_size` input rows of it), with γ, β learnable (init 4.0):

    xmax = σ(γ)·max W,   xmin = σ(β)·min W                  (the reference: no 0 forced into the range)
    h = clip((xmax − xmin)/(2^k − 1), 1e-5, 1e4),   z = round(clip(−xmin/h, −1e4, 1e4))
    W̃ = h·(clip(⌊W/h⌉ + z, 0, 2^k − 1) − z)                 ⌊·⌉ = round with the straight-through estimator

z is rounded without an STE (torch's .round(), zero gradient), so γ, β learn through h alone. Trained per
decoder block by bitjax.quant.block_recon (the FP weights frozen): AdamW, lr 1e-2, weight decay 0,
batch 1, 20 epochs at W3/W4 and 40 at W2 (the reference's scripts).

LET (the learnable equivalent transformation, Eq. 4–5; :data:`METHOD_LET`, `--let`): per-channel scales
s, trained with AdamW lr 5e-3 beside LWC, folded into the weights before they are quantized, as the
reference's smooth_*_temporary for Llama (kernels here are (in, out): a torch weight's columns are rows):

    norm→q/k/v:    g₁ ← g₁/s₁,  W_{q,k,v} ← diag(s₁)·W                 (input_layernorm's scale g₁, s₁ (D,))
    norm→gate/up:  g₂ ← g₂/s₂,  W_{gate,up} ← diag(s₂)·W
    v→o:           W_v ← W_v·diag(s₃)⁻¹,  W_o ← diag(s₃ repeated per query head of its KV group)·W_o
    q·k:           W_q ← W_q·diag(s₄ repeated)⁻¹,  W_k ← W_k·diag(s₄)    (s₄ tied over RoPE's rotated pairs)

each |s| truncated to ≥ 1e-2 in the forward (the reference's truncate_number). Deviations, deliberate:
s starts at 1 (the identity) rather than the reference's SmoothQuant statistic max|X|^α / max W^(1−α)
(which needs activation statistics gathered beforehand); no shifts δ (bitjax's RMSNorm and projections
have no bias to absorb them); s₄ is tied over the (d, d + hd/2) pairs RoPE rotates together, so q·k stays
an equivalence under RoPE; with BitNet's attn_sub_norm (an RMSNorm between v and o) there is no v→o pair.
At s = 1 the block is the LWC block exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bitjax.quant import block_recon

INIT = 4.0  # σ(4) ≈ 0.982: the clipping starts just inside the min-max range
LR = 1e-2  # the reference's --lwc_lr
LET_LR = 5e-3  # the reference's --let_lr
LET_MIN = 1e-2  # truncate_number's threshold on |s|
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


def init(params: dict, bits: int, group_size: int | None, layer=None) -> dict:
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


# ----------------------------------------------------------------------------- LET
def truncate(s: jax.Array) -> jax.Array:
    """s with |s| < 1e-2 set to ±1e-2 (sign kept, 0 → +): the reference's truncate_number."""
    return jnp.where(jnp.abs(s) < LET_MIN, jnp.where(s < 0, -LET_MIN, LET_MIN), s)


def let_init(params: dict, bits: int, group_size: int | None, layer) -> dict:
    """θ = {'lwc': init(…), 'let': {'qkv': (D,), 'fc1': (D,), 'qkt': (n_kv, hd/2), 'out': (n_kv, hd)}}, all 1
    ('out' absent with attn_sub_norm); `layer`'s self_attn gives n_kv_heads and head_dim."""
    attn = layer.self_attn
    d = params["input_layernorm"]["scale"].shape[0]
    let = {
        "qkv": jnp.ones((d,)),
        "fc1": jnp.ones((d,)),
        "qkt": jnp.ones((attn.n_kv_heads, attn.head_dim // 2)),
    }
    if getattr(attn, "attn_sub_norm", None) is None:
        let["out"] = jnp.ones((attn.n_kv_heads, attn.head_dim))
    return {"lwc": init(params, bits, group_size), "let": let}


def let_transform(params: dict, let: dict) -> dict:
    """The block's FP parameters with LET's scales folded in (see the module docstring): the same function
    of x when quantization is off. let['qkt'] (n_kv, hd/2) gives the head layout."""
    attn, mlp = dict(params["self_attn"]), dict(params["mlp"])
    kernel = lambda owner, name: owner[name]["kernel"]
    put = lambda owner, name, w: owner.__setitem__(name, {**owner[name], "kernel": w})
    s1, s2 = truncate(let["qkv"]), truncate(let["fc1"])
    for name in ("q_proj", "k_proj", "v_proj"):
        put(attn, name, kernel(attn, name) * s1[:, None])
    for name in ("gate_proj", "up_proj"):
        put(mlp, name, kernel(mlp, name) * s2[:, None])
    n_kv, half = let["qkt"].shape
    rep = kernel(attn, "q_proj").shape[1] // (n_kv * 2 * half)  # query heads per KV head
    per_query_head = lambda s: jnp.repeat(s, rep, axis=0).reshape(-1)  # query head n reads KV head n // rep
    if "out" in let:
        s3 = truncate(let["out"])
        put(attn, "v_proj", kernel(attn, "v_proj") / s3.reshape(-1)[None, :])
        put(attn, "o_proj", kernel(attn, "o_proj") * per_query_head(s3)[:, None])
    s4 = truncate(let["qkt"])
    s4 = jnp.concatenate([s4, s4], axis=-1)  # (n_kv, hd): RoPE's pairs (d, d + hd/2) share a scale
    put(attn, "k_proj", kernel(attn, "k_proj") * s4.reshape(-1)[None, :])
    put(attn, "q_proj", kernel(attn, "q_proj") / per_query_head(s4)[None, :])
    out = {**params, "self_attn": attn, "mlp": mlp}
    out["input_layernorm"] = {**params["input_layernorm"], "scale": params["input_layernorm"]["scale"] / s1}
    out["post_attention_layernorm"] = {
        **params["post_attention_layernorm"],
        "scale": params["post_attention_layernorm"]["scale"] / s2,
    }
    return out


def let_apply(theta: dict, params: dict, bits: int, group_size: int | None) -> dict:
    """LET's transformed block, each kernel then fake-quantized under LWC (the reference's order)."""
    return apply(theta["lwc"], let_transform(params, theta["let"]), bits, group_size)


def let_optimizer(theta: dict, total_steps: int, bits: int) -> optax.GradientTransformation:
    """One AdamW (wd 0) with two learning rates, as the reference's two parameter groups: LWC 1e-2, LET 5e-3."""
    labels = {k: jax.tree.map(lambda _, k=k: k, v) for k, v in theta.items()}
    adamw = lambda lr: optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    return optax.multi_transform({"lwc": adamw(LR), "let": adamw(LET_LR)}, labels)


_EPOCHS = lambda bits: 40 if bits <= 2 else 20  # (the reference's scripts: W2 40, W3/W4 20)
METHOD_LET = block_recon.BlockMethod(
    init=let_init, apply=let_apply, optimizer=let_optimizer, default_epochs=_EPOCHS, default_batch_size=1
)
METHOD = block_recon.BlockMethod(
    init=init,
    apply=apply,
    optimizer=optimizer,
    default_epochs=_EPOCHS,
    default_batch_size=1,
    variants=(("let", METHOD_LET),),
)
