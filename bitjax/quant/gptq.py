"""GPTQ post-training quantization (Frantar et al., 2023, "GPTQ", Algorithm 1), pure JAX.

For a layer y = x W with kernel W (in, out) and calibration inputs X (n, in), GPTQ minimises
‖X W − X W̃‖² over W̃ on the k-bit grid, quantizing one input row of W at a time and spreading each
row's rounding error over the rows not yet quantized through the inverse Hessian H⁻¹, H = 2XᵀX:

    H ← H + λ·mean(diag H)·I               (dampening; dead inputs, diag H = 0, get H_ii = 1, W_i = 0)
    U = chol(H⁻¹)ᵀ  (upper),  H⁻¹ = UᵀU
    for i = 0 … in−1:
        q_i = Q(W_i)                        (the row on the grid, one (scale, zero) per output channel or group)
        e_i = (W_i − q_i) / U_ii
        W_j ← W_j − U_ij · e_i   for j > i  (eq. 3 with the Cholesky form of §4, "Step 3")

The grid is the reference's min-max ``Quantizer`` (IST-DASLab/gptq, quant.py), i.e. bitjax's
:func:`bitjax.quant.weights.rtn_codes` (asymmetric with a zero point by default, `sym=True` for the
reference's ``--sym``): GPTQ and `rtn<k>` then differ only by the error feedback. As in the reference's
``fasterquant`` (gptq.py), without groups the per-channel (scale, zero) come from the whole W *before*
dead inputs are zeroed; with `group_size` a group's (scale, zero) come from its rows when the group
starts, as the reference's W holds them then: updated by the errors of all earlier `block_size`
blocks (its lazy batch updates, §4) but not yet by the earlier rows of the current block. When
every group starts a block (`block_size` divides `group_size`, e.g. 128 and 128) that is the fully
updated W.
`act_order` quantizes inputs in order of decreasing diag H (the reference's ``--act-order``). With
groups it then has the reference's two modes:
* default (no ``--static-groups``): a group is `group_size` consecutive rows *in that order*, its
  (scale, zero) found when it starts, as above. This is what the reference runs with ``--act-order``
  alone (its default) and gives the lower error, but a group's rows are scattered over the original
  input dimension, so a packed kernel needs the permutation (a ``g_idx``) to dequantize.
* `static_groups` (``--static-groups``): the groups are the original consecutive rows and their
  (scale, zero) are all found up front from W (dead inputs zeroed, before any update); the rows are
  still visited in diag-H order, each with its own original group's grid. A packed kernel then keeps
  the ordinary layout; the reference recommends it with act_order "for more efficient inference".
bitjax fake-quantizes (W̃ is stored dense), so both are equally usable here; `python -m bitjax.ptq`
defaults to the reference's default and offers ``--static_groups``.
The lazy block updates are otherwise an exact reordering of the loop above and are left to XLA.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bitjax.quant.weights import rtn_grid, rtn_round, rtn_scale


def hessian(x: jax.Array) -> jax.Array:
    """H = 2 XᵀX / n for calibration inputs x (n, L, in) (or (L, in), n = 1), float32 (in, in).

    n counts sequences, not tokens, as the reference's ``add_batch`` (gptq.py: ``tmp = inp.shape[0]``
    after ``unsqueeze(0)`` of a 2-D input). GPTQ's updates and BiLLM's saliency are invariant to a
    constant factor of H except through the dead-input fix H_ii := 1, which this normalisation matches.
    """
    n = 1 if x.ndim == 2 else math.prod(x.shape[:-2])
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return 2.0 * (x.T @ x) / n


def prepare(w: jax.Array, h: jax.Array, damp: float = 0.01, act_order: bool = False):
    """The preamble shared by GPTQ and BiLLM (the references' ``fasterquant``), in float32.

    Dead inputs (H_ii = 0) get H_ii = 1 and W_i = 0; with `act_order` inputs are permuted by
    decreasing diag H (after that fix); H += damp·mean(diag H)·I; U = chol(H⁻¹)ᵀ (upper, H⁻¹ = UᵀU).
    Returns (W (in, out) dead-zeroed and permuted, U (in, in) permuted, perm (in,)).
    """
    if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"expected w (in, out) and h (in, in); got {w.shape} and {h.shape}")
    n_in = w.shape[0]
    w, h = w.astype(jnp.float32), h.astype(jnp.float32)
    dead = jnp.diag(h) == 0
    h = jnp.where(jnp.diag(dead), 1.0, h)
    w = jnp.where(dead[:, None], 0.0, w)
    perm = jnp.argsort(-jnp.diag(h)) if act_order else jnp.arange(n_in)
    w, h = w[perm], h[perm][:, perm]
    h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(n_in, dtype=h.dtype)
    return w, jnp.linalg.cholesky(jnp.linalg.inv(h)).T, perm


def gptq_codes(
    w: jax.Array,
    h: jax.Array,
    bits: int = 4,
    group_size: int | None = None,
    damp: float = 0.01,
    act_order: bool = False,
    sym: bool = False,
    block_size: int = 128,
    static_groups: bool = False,
):
    """GPTQ of a kernel w (in, out) given its layer-input Hessian h (in, in).

    Returns (codes uint8 (in, out) in [0, 2^k − 1], scales float32 (in, out), zeros float32 (in, out)):
    W̃ = scales · (codes − zeros). `group_size` (dividing `in`) gives one (scale, zero) per group of
    input rows and output channel; None, one per output channel. `block_size` only matters with
    groups (see the module docstring); `static_groups` (with groups) fixes every group's grid up front
    on the original row order (the reference's ``static_groups``; the module docstring).
    """
    if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"gptq expects w (in, out) and h (in, in); got {w.shape} and {h.shape}")
    maxq = rtn_grid(bits)
    n_in, _ = w.shape
    g = n_in if group_size is None else int(group_size)
    if g < 1 or n_in % g:
        raise ValueError(f"group_size {group_size} must divide the input dim {n_in}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")

    def params(rows):  # per output channel over `rows`, as rtn_codes
        s, z = rtn_scale(rows, maxq, 0, sym)
        return s[0], z[0]

    per_channel = params(w.astype(jnp.float32))  # the reference finds these before zeroing dead rows
    w, u, perm = prepare(w, h, damp, act_order)
    static = group_size is not None and static_groups
    if static:  # each original group's grid from W (dead rows zeroed, not yet updated), in visiting order
        w0 = w[jnp.argsort(perm)].reshape(n_in // g, g, -1)
        gs, gz = jax.vmap(params)(w0)  # (groups, out) each
        row_s, row_z = gs[perm // g], gz[perm // g]  # (in, out): the grid of the row visited i-th

    def body(i, carry):
        w, w_block, codes, scales, zeros, s, z = carry
        w_block = jnp.where(i % block_size == 0, w, w_block)  # the reference's W at this block's start
        if static:
            s, z = row_s[i], row_z[i]
        elif group_size is not None:
            gs, gz = params(jax.lax.dynamic_slice_in_dim(w_block, i, g, axis=0))
            s, z = jnp.where(i % g == 0, gs, s), jnp.where(i % g == 0, gz, z)
        row = w[i]
        c = rtn_round(row, s, z, maxq)
        err = (row - s * (c - z)) / u[i, i]
        w = w - u[i][:, None] * err[None, :]  # u[i, j] = 0 for j < i: only later rows change
        return w, w_block, codes.at[i].set(c), scales.at[i].set(s), zeros.at[i].set(z), s, z

    init = (w, w, jnp.zeros_like(w), jnp.zeros_like(w), jnp.zeros_like(w)) + per_channel
    _, _, codes, scales, zeros, _, _ = jax.lax.fori_loop(0, n_in, body, init)
    inv = jnp.argsort(perm)
    return codes[inv].astype(jnp.uint8), scales[inv], zeros[inv]


def gptq(
    w: jax.Array,
    h: jax.Array,
    bits: int = 4,
    group_size: int | None = None,
    damp: float = 0.01,
    act_order: bool = False,
    sym: bool = False,
    block_size: int = 128,
    static_groups: bool = False,
) -> jax.Array:
    """GPTQ-quantized kernel W̃ = scales·(codes − zeros) (in, out), in w's dtype. See :func:`gptq_codes`."""
    codes, scales, zeros = gptq_codes(w, h, bits, group_size, damp, act_order, sym, block_size, static_groups)
    return (scales * (codes.astype(jnp.float32) - zeros)).astype(w.dtype)
