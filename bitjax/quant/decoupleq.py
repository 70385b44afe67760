"""decoupleQ's layer-wise stage (Guo et al., 2024, "decoupleQ: Towards 2-bit Post-Training Uniform
Quantization via decoupling Parameters into Integer and Floating Points", arXiv 2404.12759 §3), pure JAX,
following the authors' code (bytedance/decoupleQ: decoupleQ/quant.py ``decoupleQ.startquant``,
moq_quant.py ``round_gptq``, ``Quantizer.get_scale_and_zero_out_group``) as run by run_llama.sh
(asymmetric, ``--act-order``, ``--round-fn gptq``).

Kernel W (in, out) (a torch weight transposed: the reference's channels are our output columns), groups
of `group_size` input rows (None: one per channel). W is approximated as W̃ = s·C + z per output channel
and group: C integer codes in [0, 2^k − 1] (the reference's signed [−2^(k−1), 2^(k−1) − 1] shifted by
an integer: the same grid, z absorbs the shift), s, z floats. The objective per output channel o is
    f_o = (w_o − w̃_o)ᵀ H₀ (w_o − w̃_o),   H₀ = H + damp·mean(diag H)·I     (tr(ΔWᵀ H₀ ΔW) summed)
with H = 2XᵀX/n (:func:`bitjax.quant.gptq.hessian`; the reference's XᵀX/tokens differs by a constant,
which nothing here depends on). Starting from the min-max grid (s, z per group, range forced to include
0; C = round-to-nearest), `iters` rounds of the two decoupled steps, each kept per channel only where it
lowers f_o (the reference's ``tmp = err0 < err``):
  (a) C with (s, z) fixed: GPTQ on that fixed per-row grid (``round_gptq``: rows in decreasing diag H₀
      with `act_order`, the error of each row pushed onto the later ones through U = chol((H₀ + 0.01·
      mean(diag H₀)·I)⁻¹)ᵀ, no lazy blocks, rounding half up as its ``my_round``);
  (b) (s, z) with C fixed: the closed-form least squares min_θ (w − Aθ)ᵀH₀(w − Aθ), θ = (s_1..s_G,
      z_1..z_G), A_ig = C_i·[i ∈ g], A_i,G+g = [i ∈ g]: θ = (AᵀH₀A)⁺ AᵀH₀w per channel (a pseudo-inverse,
      so a group whose codes are all equal, AᵀH₀A singular, still gets the least-squares solution).
So f_o never increases (:func:`decoupleq_codes` returns it after each step).

The reference's first round (its ``iters_for_scale`` ≥ 2) runs (a) on a candidate grid instead: the
closed-form (s, z) of the round-to-nearest codes on the min-max grid shrunk by the per-channel factor
p ∈ {1, 0.995, …, 0.205} that lowers f most (`shrink`, on by default; :func:`shrink_search`).
Not done as in the reference (said here, not hidden): its iteration count runs one GPTQ step on the
min-max grid before the rounds (max_iter_num = rounds + 1), and it stops early when no channel improves
(here a round that improves nothing changes nothing).

The paper's second stage (§3.3; the reference's ``minimize_block`` with --train-LN): per decoder block,
with the codes C frozen, the block's (s, z) and norms are trained with Adam on the MSE between the
block's output and the unquantized block's output on the same input: :func:`block_method`, run by
bitjax.ptq (``--block_epochs``) through bitjax.quant.block_recon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bitjax.quant.weights import rtn_grid


def objective(w: jax.Array, wq: jax.Array, h: jax.Array) -> jax.Array:
    """f_o = (w_o − w̃_o)ᵀ h (w_o − w̃_o) per output channel: (out,) for w, wq (in, out), h (in, in)."""
    d = (w - wq).astype(jnp.float32)
    return jnp.sum(d * (h @ d), axis=0)


def _safe_div(x, y):
    """x / y with |y| ≥ 1e-15 keeping its sign (0 counts as +), as the reference's ``safe_div``."""
    return x / (jnp.maximum(jnp.abs(y), 1e-15) * jnp.where(y < 0, -1.0, 1.0))


def round_to_grid(w: jax.Array, s_rows: jax.Array, z_rows: jax.Array, maxq: int) -> jax.Array:
    """C = clip(⌊(w − z)/s + ½⌋, 0, maxq) (round half up, the reference's ``my_round``); all (in, out)."""
    return jnp.clip(jnp.floor(_safe_div(w - z_rows, s_rows) + 0.5), 0, maxq)


def minmax_grid(w: jax.Array, bits: int, g: int) -> tuple[jax.Array, jax.Array]:
    """(s, z) (groups, out) of the min-max grid per group of g input rows: the range [min(·, 0), max(·, 0)]
    (both 0: [−1, 1]), s = (max − min)/(2^k − 1), z = min (the reference's ``get_minmax``)."""
    wr = w.reshape(w.shape[0] // g, g, w.shape[1])
    lo, hi = jnp.minimum(wr.min(1), 0.0), jnp.maximum(wr.max(1), 0.0)
    both = (lo == 0) & (hi == 0)
    lo, hi = jnp.where(both, -1.0, lo), jnp.where(both, 1.0, hi)
    return (hi - lo) / rtn_grid(bits), lo


def shrink_search(
    w: jax.Array, h0: jax.Array, s: jax.Array, z: jax.Array, maxq: int, grid: int = 200, max_shrink: float = 0.8
) -> tuple[jax.Array, jax.Array]:
    """The min-max grid (s, z) (groups, out) shrunk by the factor p ∈ {1 − i/grid : i < max_shrink·grid}
    lowering each channel's objective most (one p per channel, all its groups; p = 1 unless another is
    strictly better), round-to-nearest codes: the reference's ``get_scale_and_zero`` (grid 200, maxshrink 0.8)."""
    g = w.shape[0] // s.shape[0]
    rows = lambda a: jnp.repeat(a, g, axis=0)

    def f_at(p):  # objective per channel of RTN on the grid (p·s, p·z): the range [p·min, p·max]
        return objective(w, rows(p * s) * round_to_grid(w, rows(p * s), rows(p * z), maxq) + rows(p * z), h0)

    def body(i, carry):
        best_f, best_p = carry
        p = 1.0 - i / grid
        f = f_at(p)
        return jnp.where(f < best_f, f, best_f), jnp.where(f < best_f, p, best_p)

    init = (f_at(1.0), jnp.ones(w.shape[1], jnp.float32))
    _, p = jax.lax.fori_loop(1, int(max_shrink * grid), body, init)
    return p * s, p * z


def closed_form_scale_zero(w: jax.Array, codes: jax.Array, h: jax.Array, g: int) -> tuple[jax.Array, jax.Array]:
    """Step (b): (s, z) (groups, out) minimising each channel's (w − s·C − z)ᵀ h (w − s·C − z), C fixed.

    Per channel the normal equations P θ = y of θ = (s_1..s_G, z_1..z_G) with (i, j over input rows,
    [i ∈ g] the group indicator): P11_gh = Σ_{i∈g, j∈h} C_i H_ij C_j, P12_gh = Σ_{i∈g, j∈h} C_i H_ij,
    P22_gh = Σ_{i∈g, j∈h} H_ij, y = (Σ_{i∈g} C_i (Hw)_i, Σ_{i∈g} (Hw)_i); θ = P⁺y.
    """
    n_in, n_out = w.shape
    n_g = n_in // g
    c = codes.astype(jnp.float32).reshape(n_g, g, n_out)
    hr = h.astype(jnp.float32).reshape(n_in, n_g, g)
    t = jnp.einsum("iGk,Gko->ioG", hr, c).reshape(n_g, g, n_out, n_g)  # Σ_{j∈G} H_ij C_j, by row i
    p11 = jnp.einsum("gko,gkoh->ogh", c, t)
    r = hr.sum(-1).reshape(n_g, g, n_g)  # Σ_{j∈h} H_ij, by row i
    p12 = jnp.einsum("gko,gkh->ogh", c, r)
    p22 = jnp.broadcast_to(r.sum(1), (n_out, n_g, n_g))
    p = jnp.concatenate(
        [jnp.concatenate([p11, p12], 2), jnp.concatenate([jnp.swapaxes(p12, 1, 2), p22], 2)], 1
    )  # (out, 2G, 2G)
    p = (p + jnp.swapaxes(p, 1, 2)) / 2  # symmetric, as the reference makes it
    hw = (h.astype(jnp.float32) @ w.astype(jnp.float32)).reshape(n_g, g, n_out)
    y = jnp.concatenate([jnp.einsum("gko,gko->og", c, hw), hw.sum(1).T], 1)  # (out, 2G)
    theta = jnp.einsum("oab,ob->oa", jnp.linalg.pinv(p, hermitian=True), y)
    return theta[:, :n_g].T, theta[:, n_g:].T


def gptq_on_grid(
    w: jax.Array, h0: jax.Array, s_rows: jax.Array, z_rows: jax.Array, maxq: int, act_order: bool = True
) -> jax.Array:
    """Step (a): codes C (in, out) by GPTQ on the fixed grid w̃_i = s_i·C_i + z_i (per row, (in, out) each),
    the reference's ``round_gptq`` (no lazy blocks; H₀ dampened once more by 0.01·mean(diag H₀))."""
    n_in = w.shape[0]
    perm = jnp.argsort(-jnp.diag(h0)) if act_order else jnp.arange(n_in)
    w, h, s, z = w[perm].astype(jnp.float32), h0[perm][:, perm], s_rows[perm], z_rows[perm]
    h = h + 0.01 * jnp.mean(jnp.diag(h)) * jnp.eye(n_in, dtype=h.dtype)
    u = jnp.linalg.cholesky(jnp.linalg.inv(h)).T  # upper, H⁻¹ = UᵀU

    def body(i, carry):
        w, codes = carry
        c = round_to_grid(w[i], s[i], z[i], maxq)
        err = (w[i] - (s[i] * c + z[i])) / u[i, i]
        return w - u[i][:, None] * err[None, :], codes.at[i].set(c)  # u[i, j] = 0 for j < i

    _, codes = jax.lax.fori_loop(0, n_in, body, (w, jnp.zeros_like(w)))
    return codes[jnp.argsort(perm)]


def _kept_where_lower(f_new, f, new, old):
    """Per output channel, `new` where its objective f_new (out,) is below f, else `old` (each (·, out));
    returns (the kept arrays, the kept objective). NaN compares False: a change is kept only if it lowers f."""
    keep = f_new < f
    return tuple(jnp.where(keep[None], n, o) for n, o in zip(new, old)), jnp.where(keep, f_new, f)


def decoupleq_codes(
    w: jax.Array,
    h: jax.Array,
    bits: int = 2,
    group_size: int | None = None,
    iters: int = 4,
    act_order: bool = True,
    damp: float = 0.01,
    shrink: bool = True,
):
    """decoupleQ's layer-wise stage of kernel w (in, out) given its input Hessian h (in, in).

    Returns (codes uint8 (in, out) in [0, 2^k − 1], s (groups, out), z (groups, out), f (2·iters + 1, out)):
    W̃ = s·codes + z row-group-wise, and f the objective per channel after the min-max start and after
    each step (a), (b) of the `iters` rounds (non-increasing). `shrink`: the first round's (a) runs on the
    closed-form (s, z) of the best shrunk min-max grid's codes (:func:`shrink_search`), as the reference's
    first iteration (``iters_for_scale``); off, on the min-max grid. See the module docstring.
    """
    if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"decoupleq expects w (in, out) and h (in, in); got {w.shape} and {h.shape}")
    maxq = rtn_grid(bits)
    n_in = w.shape[0]
    g = n_in if group_size is None else int(group_size)
    if g < 1 or n_in % g:
        raise ValueError(f"group_size {group_size} must divide the input dim {n_in}")
    if iters < 0:
        raise ValueError(f"iters must be ≥ 0, got {iters}")
    w = w.astype(jnp.float32)
    h0 = h.astype(jnp.float32)
    h0 = h0 + damp * jnp.mean(jnp.diag(h0)) * jnp.eye(n_in, dtype=h0.dtype)
    rows = lambda a: jnp.repeat(a, g, axis=0)  # (groups, out) → (in, out)
    f_of = lambda c, s, z: objective(w, rows(s) * c + rows(z), h0)

    s, z = minmax_grid(w, bits, g)
    codes = round_to_grid(w, rows(s), rows(z), maxq)
    f = f_of(codes, s, z)
    if shrink:  # the first round's candidate grid
        s_p, z_p = shrink_search(w, h0, s, z, maxq)
        s_c, z_c = closed_form_scale_zero(w, round_to_grid(w, rows(s_p), rows(z_p), maxq), h0, g)
    else:
        s_c, z_c = s, z

    def step(carry, first):
        codes, s, z, f = carry
        sa, za = jnp.where(first, s_c, s), jnp.where(first, z_c, z)  # (a)'s grid: the candidate, then (s, z)
        c1 = gptq_on_grid(w, h0, rows(sa), rows(za), maxq, act_order)  # (a)
        (codes, s, z), f = _kept_where_lower(f_of(c1, sa, za), f, (c1, sa, za), (codes, s, z))
        fa = f
        s1, z1 = closed_form_scale_zero(w, codes, h0, g)  # (b)
        (s, z), f = _kept_where_lower(f_of(codes, s1, z1), f, (s1, z1), (s, z))
        return (codes, s, z, f), jnp.stack([fa, f])

    (codes, s, z, _), trace = jax.lax.scan(step, (codes, s, z, f), jnp.arange(iters) == 0)
    history = jnp.concatenate([f[None], trace.reshape(-1, f.shape[0])])
    return codes.astype(jnp.uint8), s, z, history


def decoupleq(
    w: jax.Array,
    h: jax.Array,
    bits: int = 2,
    group_size: int | None = None,
    iters: int = 4,
    act_order: bool = True,
    damp: float = 0.01,
    shrink: bool = True,
) -> jax.Array:
    """decoupleQ-quantized kernel W̃ = s·codes + z (in, out), in w's dtype. See :func:`decoupleq_codes`."""
    codes, s, z, _ = decoupleq_codes(w, h, bits, group_size, iters, act_order, damp, shrink)
    g = w.shape[0] // s.shape[0]
    wq = jnp.repeat(s, g, axis=0) * codes.astype(jnp.float32) + jnp.repeat(z, g, axis=0)
    return wq.astype(w.dtype)


# ============================================================================ the block stage
BLOCK_LR = 1e-5  # run_llama.sh --blockwise-minimize-lr
BLOCK_WD = 1e-6  # llama.py --blockwise-minimize-wd (torch Adam's L2 term, added to the gradient)
BLOCK_EPOCHS = 4  # run_llama.sh --blockwise-minimize-epoch


def block_method(stage: dict):
    """decoupleQ's block stage as a :class:`bitjax.quant.block_recon.BlockMethod` (the reference's
    ``minimize_block`` with --train-LN, asymmetric): the codes C of the layer-wise stage frozen, each
    projection's (s, z) and the block's norms trained with Adam (lr 1e-5, β (0.9, 0.99), ε 2e-5, L2 1e-6)
    on the MSE to the block's output. `stage` holds the current block's layer-wise result,
    {'codes'|'s'|'z': {block: {name: array}}}, set before each block (read by init only, so one compiled
    step serves every block)."""
    import optax

    from bitjax.quant import block_recon

    def init(params, bits, group_size, layer=None):
        norms = {k: v for k, v in params.items() if "norm" in k}  # input / post-attention norms
        codes = jax.tree.map(lambda c: c.astype(jnp.float32), stage["codes"])  # grad needs floats; never updated
        return {"codes": codes, "s": stage["s"], "z": stage["z"], "norms": norms}

    def apply(theta, params, bits, group_size):
        new = {}
        for block, name, w in block_recon.kernels(params):
            c = jax.lax.stop_gradient(theta["codes"][block][name]).astype(jnp.float32)
            s, z = theta["s"][block][name], theta["z"][block][name]
            g = c.shape[0] // s.shape[0]
            new.setdefault(block, {})[name] = (jnp.repeat(s, g, 0) * c + jnp.repeat(z, g, 0)).astype(w.dtype)
        return {**block_recon.with_kernels(params, new), **theta["norms"]}

    def optimizer(theta, total_steps, bits):
        labels = {k: jax.tree.map(lambda _, k=k: "frozen" if k == "codes" else "train", v) for k, v in theta.items()}
        adam = optax.chain(optax.add_decayed_weights(BLOCK_WD), optax.adam(BLOCK_LR, b1=0.9, b2=0.99, eps=2e-5))
        return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)

    return block_recon.BlockMethod(
        init=init, apply=apply, optimizer=optimizer, default_epochs=lambda bits: BLOCK_EPOCHS, default_batch_size=1
    )
