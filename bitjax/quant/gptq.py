"""GPTQ post-training quantization (Frantar et al., 2023, "GPTQ", Algorithm 1), pure JAX.

For a layer y = x W with kernel W (in, out) and calibration inputs X (n, in), GPTQ minimises
‖X W − X W̃‖² over W̃ on the k-bit grid, quantizing one input row of W at a time and spreading each
row's rounding error over the rows not yet quantized through the inverse Hessian H⁻¹, H = 2XᵀX:

    H ← H + λ·mean(diag H)·I               (dampening; dead inputs, diag H = 0, get H_ii = 1, W_i = 0)
    U = chol(H⁻¹)ᵀ  (upper),  H⁻¹ = UᵀU
    for i = 0 … in−1:
        q_i = Q(W_i)                        (the row on the grid, one scale per output channel or group)
        e_i = (W_i − q_i) / U_ii
        W_j ← W_j − U_ij · e_i   for j > i  (eq. 3 with the Cholesky form of §4, "Step 3")

The grid is bitjax's symmetric round-to-nearest (:func:`bitjax.quant.weights.rtn_codes`): GPTQ and
`rtn<k>` then differ only by the error feedback. Scales are per output channel from the (dead-zeroed)
W, or, with `group_size`, computed from the partially updated rows when each group starts (as the
reference implementation does). `act_order` quantizes inputs in order of decreasing diag H (the
reference's "desc_act"; groups are then consecutive in that order, as without its static_groups).
The lazy block updates of §4 are an exact reordering of this loop and are left to XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bitjax.quant.weights import rtn_grid, rtn_round, rtn_scale


def hessian(x: jax.Array) -> jax.Array:
    """H = 2 XᵀX / n for calibration inputs x (…, in), float32 (in, in)."""
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return 2.0 * (x.T @ x) / x.shape[0]


def gptq_codes(w: jax.Array, h: jax.Array, bits: int = 4, group_size: int | None = None,
               damp: float = 0.01, act_order: bool = False):
    """GPTQ of a kernel w (in, out) given its layer-input Hessian h (in, in).

    Returns (codes int8 (in, out) in [−2^(k−1), 2^(k−1) − 1], scales float32 (in, out)):
    W̃ = codes · scales. `group_size` (dividing `in`) gives one scale per group of input rows and
    output channel; None, one per output channel.
    """
    if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"gptq expects w (in, out) and h (in, in); got {w.shape} and {h.shape}")
    qp = rtn_grid(bits)
    n_in, _ = w.shape
    g = n_in if group_size is None else int(group_size)
    if g < 1 or n_in % g:
        raise ValueError(f"group_size {group_size} must divide the input dim {n_in}")
    w = w.astype(jnp.float32)
    h = h.astype(jnp.float32)

    dead = jnp.diag(h) == 0
    h = jnp.where(jnp.diag(dead), 1.0, h)
    w = jnp.where(dead[:, None], 0.0, w)
    perm = jnp.argsort(-jnp.diag(h)) if act_order else jnp.arange(n_in)
    w, h = w[perm], h[perm][:, perm]
    h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(n_in, dtype=h.dtype)
    u = jnp.linalg.cholesky(jnp.linalg.inv(h)).T  # upper: H⁻¹ = UᵀU

    def scale_of(rows):  # per output channel over `rows`, as rtn_codes
        return rtn_scale(rows, qp, 0)[0]

    per_channel = scale_of(w)

    def body(i, carry):
        w, codes, scales, s = carry
        if group_size is not None:  # a new group's scale, from its rows as updated so far
            group = jax.lax.dynamic_slice_in_dim(w, (i // g) * g, g, axis=0)
            s = jnp.where(i % g == 0, scale_of(group), s)
        row = w[i]
        c = rtn_round(row, s, qp)
        err = (row - c * s) / u[i, i]
        w = w - u[i][:, None] * err[None, :]  # u[i, j] = 0 for j < i: only later rows change
        return w, codes.at[i].set(c), scales.at[i].set(s), s

    init = (w, jnp.zeros_like(w), jnp.zeros_like(w), per_channel)
    _, codes, scales, _ = jax.lax.fori_loop(0, n_in, body, init)
    inv = jnp.argsort(perm)
    return codes[inv].astype(jnp.int8), scales[inv]


def gptq(w: jax.Array, h: jax.Array, bits: int = 4, group_size: int | None = None, damp: float = 0.01,
         act_order: bool = False) -> jax.Array:
    """GPTQ-quantized kernel W̃ = codes · scales (in, out), in w's dtype. See :func:`gptq_codes`."""
    codes, scales = gptq_codes(w, h, bits, group_size, damp, act_order)
    return (codes.astype(jnp.float32) * scales).astype(w.dtype)
