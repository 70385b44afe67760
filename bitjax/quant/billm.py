"""BiLLM post-training binarization (Huang et al., 2024, "BiLLM: Pushing the Limit of Post-Training
Quantization for LLMs"), pure JAX, following the authors' code (Aaronhuang-778/BiLLM: bigptq.py
``BRAGPTQ.fasterquant``, binary.py ``high_order_residual``, utils/structure.py, utils/autosearch.py
``structural_searching``, utils/mask.py ``generate_structural_mask``) with its defaults as run by
run.sh (``braq``, ``--salient_metric hessian``, ``--blocksize 128``).

Kernel W (in, out) (a torch (out, in) weight transposed: the reference's "columns" are our input rows),
H = 2XᵀX/n over n calibration sequences (:func:`bitjax.quant.gptq.hessian`). As in GPTQ (same preamble,
:func:`bitjax.quant.gptq.prepare`): dead inputs zeroed, H dampened, U = chol(H⁻¹)ᵀ upper. Then for each
block of `block_size` input rows [a, b) (the last one may be shorter), with d_i = U_ii:

1. Saliency (paper §3.1, Hessian metric; structure.py): S_io = W_io² / d_i² ("hessian";
   "magnitude": S = W). The masks are searched on S itself, as the reference does:
   * salient rows (§3.1, structural selection): rows ranked by Σ_o |S_io|; the number r of
     salient rows is the r ∈ 1..up_lim−1 minimising mean((S − R₂(S; top r) − R₂(S; rest))²);
   * break-point (§3.2, distribution splitting): on the other rows, p among the 81 quantiles
     0.10, 0.11, …, 0.90 of |S·(not salient)| (all block entries, the salient rows' zeros included)
     minimising mean((S − R₁(S; |S| < p) − R₁(S; |S| ≥ p) − R₂(S; salient))²):
     concentrated = |S| < p, sparse = |S| ≥ p.
2. W̃_block = R₁(W; concentrated) + R₁(W; sparse) + R₂(W; salient) on the block as updated so far.
   R_k is the reference's residual binarization (§3.1, binary residual approximation), per output
   channel over the masked entries of the block, k passes of μ = mean(res), α = mean|res − μ|,
   B = α·sign(res − μ) + μ, res ← res − B (every pass mean-shifted; sign(0) = 0 as torch.sign).
3. Error feedback between blocks only: E = (W_block − W̃_block)/d (per row),
   W_{b:} ← W_{b:} − U_{a:b, b:}ᵀ E. Inside a block the reference does not update W (it binarizes
   the whole block at once), so neither do we.

Where a block is shorter than `up_lim` rows (the reference's topk would fail) r ranges over 1..rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bitjax.quant.gptq import prepare

N_SPLITS = 81  # autosearch.py: torch.linspace(0.10, 0.90, 81) quantiles


def residual_binarize(x: jax.Array, mask: jax.Array, order: int) -> jax.Array:
    """R_order(x; mask): BiLLM's residual binarization (binary.py ``high_order_residual``).

    x, mask: (rows, out). Per output channel over the masked rows, `order` passes of
    μ = mean(r), α = mean|r − μ|, r ← r − (α·sign(r − μ) + μ), starting from r = x; returns the sum of
    the passes' α·sign(r − μ) + μ on the mask and 0 elsewhere (μ = α = 0 where a channel has no entry).
    """
    m = mask.astype(x.dtype)
    count = jnp.maximum(jnp.sum(m, axis=0, keepdims=True), 1.0)
    total = jnp.zeros_like(x)
    for _ in range(order):
        r = (x - total) * m
        mu = jnp.sum(r, axis=0, keepdims=True) / count
        c = r - mu
        alpha = jnp.sum(jnp.abs(c) * m, axis=0, keepdims=True) / count
        total = total + (alpha * jnp.sign(c) + mu) * m
    return total


def _masks(s: jax.Array, up_lim: int):
    """(concentrated, sparse, salient) masks (rows, out) of a block from its saliency s (autosearch.py)."""
    rows = s.shape[0]
    rank = jnp.argsort(jnp.argsort(-jnp.sum(jnp.abs(s), axis=1)))  # 0 = most salient row
    counts = jnp.arange(1, min(up_lim - 1, rows) + 1)

    def salient(r):
        return jnp.broadcast_to((rank < r)[:, None], s.shape)

    def err_salient(r):
        m = salient(r)
        return jnp.mean((s - residual_binarize(s, m, 2) - residual_binarize(s, ~m, 2)) ** 2)

    # argmin takes the first minimum, as the reference's strict `<`
    m3 = salient(counts[jnp.argmin(jax.vmap(err_salient)(counts))])
    g3 = residual_binarize(s, m3, 2)
    rest = jnp.abs(s * ~m3)
    splits = jnp.quantile(rest.ravel(), jnp.linspace(0.10, 0.90, N_SPLITS, dtype=jnp.float32))

    def split(p):
        return (rest < p) & ~m3, (rest >= p) & ~m3

    def err_split(p):
        m1, m2 = split(p)
        return jnp.mean((s - residual_binarize(s, m1, 1) - residual_binarize(s, m2, 1) - g3) ** 2)

    m1, m2 = split(splits[jnp.argmin(jax.vmap(err_split)(splits))])
    return m1, m2, m3


def _block(wb: jax.Array, d: jax.Array, up_lim: int, metric: str):
    """Binarize one block wb (rows, out) given d = diag(U) of its rows: (W̃_block, E = (wb − W̃)/d)."""
    d = d[:, None]
    s = wb**2 / d**2 if metric == "hessian" else wb
    m1, m2, m3 = _masks(s, up_lim)
    q = residual_binarize(wb, m1, 1) + residual_binarize(wb, m2, 1) + residual_binarize(wb, m3, 2)
    return q, (wb - q) / d


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _billm(w, u, block_size, up_lim, metric):
    n_in = w.shape[0]
    diag = jnp.diag(u)
    row = jnp.arange(n_in)[:, None]

    def body(k, carry):
        w, q = carry
        a = k * block_size
        wb = jax.lax.dynamic_slice_in_dim(w, a, block_size, axis=0)
        qb, e = _block(wb, jax.lax.dynamic_slice_in_dim(diag, a, block_size), up_lim, metric)
        # U is upper triangular, so U_{a:b, :}ᵀ E only touches rows ≥ a; rows < b are done.
        upd = jax.lax.dynamic_slice_in_dim(u, a, block_size, axis=0).T @ e
        w = w - jnp.where(row >= a + block_size, upd, 0.0)
        return w, jax.lax.dynamic_update_slice_in_dim(q, qb, a, axis=0)

    n_full = n_in // block_size
    q = jnp.zeros_like(w)
    if n_full:  # (a loop of 0 full blocks would still trace a block_size slice of a shorter w)
        w, q = jax.lax.fori_loop(0, n_full, body, (w, q))
    a = n_full * block_size
    if a < n_in:  # the shorter last block (the reference's col_ed = min(col_st + blocksize, columns))
        q = q.at[a:].set(_block(w[a:], diag[a:], up_lim, metric)[0])
    return q


def billm(
    w: jax.Array,
    h: jax.Array,
    block_size: int = 128,
    damp: float = 0.01,
    salient_metric: str = "hessian",
    up_lim: int = 50,
) -> jax.Array:
    """BiLLM-binarized kernel W̃ (in, out), in w's dtype, from w (in, out) and h (in, in) (module docstring).

    `block_size`: input rows per block (reference ``--blocksize``, 128); `damp`: ``percdamp``;
    `salient_metric`: "hessian" (S = W²/d²) or "magnitude" (S = W); `up_lim`: salient row counts
    1..up_lim−1 are tried (the reference passes 50 from bigptq.py).
    """
    if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"billm expects w (in, out) and h (in, in); got {w.shape} and {h.shape}")
    if block_size < 1 or up_lim < 2:
        raise ValueError(f"billm needs block_size ≥ 1 and up_lim ≥ 2, got {block_size} and {up_lim}")
    if salient_metric not in ("hessian", "magnitude"):
        raise ValueError(f"salient_metric must be 'hessian' or 'magnitude', got {salient_metric!r}")
    w32, u, _ = prepare(w, h, damp)
    return _billm(w32, u, int(block_size), int(up_lim), salient_metric).astype(w.dtype)
