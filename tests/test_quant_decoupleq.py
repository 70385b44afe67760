"""decoupleQ's layer-wise stage vs a numpy restatement written from the paper (Guo et al. 2024, §3) and
the reference (bytedance/decoupleQ: quant.py ``startquant``, moq_quant.py ``round_gptq``,
``get_scale_and_zero_out_group``), and its defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant.decoupleq import closed_form_scale_zero, decoupleq, decoupleq_codes, gptq_on_grid, shrink_search
from bitjax.quant.gptq import hessian


def problem(n_in=32, n_out=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, n_in)) @ rng.standard_normal((n_in, n_in)) * 0.3  # correlated inputs
    w = rng.standard_normal((n_in, n_out)) * 0.02 + 0.004
    return w.astype(np.float32), np.asarray(hessian(jnp.asarray(x, jnp.float32)), np.float64)


def damped(h, damp=0.01):
    return h + damp * np.mean(np.diag(h)) * np.eye(len(h))


def np_objective(w, wq, h):
    d = np.asarray(wq, np.float64) - w
    return np.einsum("io,ij,jo->o", d, h, d)


def np_closed_form(w, c, h, g):
    """Per channel, the H-weighted least squares of w ≈ A θ (A = [C·1_g | 1_g] per group), by lstsq on
    Lᵀ A θ ≈ Lᵀ w with H = L Lᵀ: the paper's convex (s, z) subproblem solved directly."""
    n_in, n_out = w.shape
    n_g = n_in // g
    L = np.linalg.cholesky(h)
    s, z = np.zeros((n_g, n_out)), np.zeros((n_g, n_out))
    for o in range(n_out):
        A = np.zeros((n_in, 2 * n_g))
        for j in range(n_g):
            A[j * g : (j + 1) * g, j] = c[j * g : (j + 1) * g, o]
            A[j * g : (j + 1) * g, n_g + j] = 1.0
        theta = np.linalg.lstsq(L.T @ A, L.T @ w[:, o].astype(np.float64), rcond=None)[0]
        s[:, o], z[:, o] = theta[:n_g], theta[n_g:]
    return s, z


def np_round(x):
    """The reference's ``my_round``: round half up."""
    return np.floor(x + 0.5)


def np_round_gptq(W, H0, S, Z, maxq, act_order):
    """``round_gptq`` in the (in, out) layout: H0 dampened by 0.01·mean diag, U = chol(H⁻¹)ᵀ, row by row."""
    n = W.shape[0]
    perm = np.argsort(-np.diag(H0), kind="stable") if act_order else np.arange(n)
    W, S, Z = W[perm].astype(np.float64), S[perm], Z[perm]
    H = H0[perm][:, perm] + 0.01 * np.mean(np.diag(H0)) * np.eye(n)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    C = np.zeros_like(W)
    for i in range(n):
        C[i] = np.clip(np_round((W[i] - Z[i]) / S[i]), 0, maxq)
        err = (W[i] - (S[i] * C[i] + Z[i])) / U[i, i]
        W[i:] -= np.outer(U[i, i:], err)
    return C[np.argsort(perm)]


def np_minmax(W, bits, g):
    Wr = W.reshape(-1, g, W.shape[1]).astype(np.float64)
    lo, hi = np.minimum(Wr.min(1), 0), np.maximum(Wr.max(1), 0)
    both = (lo == 0) & (hi == 0)
    lo, hi = np.where(both, -1, lo), np.where(both, 1, hi)
    return (hi - lo) / (2**bits - 1), lo


def np_shrink(W, H0, s, z, maxq, g):
    """``get_scale_and_zero``: per channel the shrink p = 1 − i/200 (i < 160) of the min-max range whose
    round-to-nearest objective is lowest (p = 1 unless strictly beaten)."""
    rows = lambda a: np.repeat(a, g, axis=0)

    def f_at(p):
        C = np.clip(np_round((W - rows(p * z)) / rows(p * s)), 0, maxq)
        return np_objective(W, rows(p * s) * C + rows(p * z), H0)

    best, bp = f_at(1.0), np.ones(W.shape[1])
    for i in range(1, 160):
        f = f_at(1 - i / 200)
        bp, best = np.where(f < best, 1 - i / 200, bp), np.minimum(f, best)
    return bp * s, bp * z


def np_decoupleq(W, H, bits, g, iters, act_order=True, shrink=True):
    """``startquant`` restated: min-max start, then rounds of (a) GPTQ on the fixed grid and (b) the
    closed-form (s, z), each kept per channel only where the objective drops; the first (a) on the
    closed-form (s, z) of the best shrunk grid's codes."""
    maxq = 2**bits - 1
    H0 = damped(H)
    s, z = np_minmax(W, bits, g)
    rows = lambda a: np.repeat(a, g, axis=0)
    C = np.clip(np_round((W - rows(z)) / rows(s)), 0, maxq)
    f = np_objective(W, rows(s) * C + rows(z), H0)
    for t in range(iters):
        sa, za = s, z
        if t == 0 and shrink:
            sp, zp = np_shrink(W, H0, s, z, maxq, g)
            sa, za = np_closed_form(W, np.clip(np_round((W - rows(zp)) / rows(sp)), 0, maxq), H0, g)
        C1 = np_round_gptq(W, H0, rows(sa), rows(za), maxq, act_order)
        f1 = np_objective(W, rows(sa) * C1 + rows(za), H0)
        keep = f1 < f
        C[:, keep], f[keep] = C1[:, keep], f1[keep]
        s, z = s.copy(), z.copy()
        s[:, keep], z[:, keep] = sa[:, keep], za[:, keep]
        s1, z1 = np_closed_form(W, C, H0, g)
        f2 = np_objective(W, rows(s1) * C + rows(z1), H0)
        keep = f2 < f
        s[:, keep], z[:, keep], f[keep] = s1[:, keep], z1[:, keep], f2[keep]
    return rows(s) * C + rows(z), f


@pytest.mark.parametrize("g", [32, 8])
def test_closed_form_scale_zero_is_the_weighted_least_squares(g):
    w, h = problem(seed=1)
    c = np.random.default_rng(2).integers(0, 4, w.shape).astype(np.float32)  # any fixed codes
    h0 = damped(h)
    s, z = closed_form_scale_zero(jnp.asarray(w), jnp.asarray(c), jnp.asarray(h0, jnp.float32), g)
    ws, wz = np_closed_form(w, c, h0, g)
    np.testing.assert_allclose(np.asarray(s), ws, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z), wz, rtol=2e-3, atol=1e-6)
    # and it is the minimum: a nudge of any (s, z) raises every channel's objective
    rows = lambda a: np.repeat(np.asarray(a, np.float64), g, axis=0)
    best = np_objective(w, rows(s) * c + rows(z), h0)
    for ds, dz in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        assert (np_objective(w, rows(np.asarray(s) + ds) * c + rows(np.asarray(z) + dz), h0) > best).all()


def test_closed_form_with_a_constant_group_still_fits():
    """All codes of a group equal: AᵀHA is singular; the pseudo-inverse still gives a least-squares fit."""
    w, h = problem(seed=3)
    c = np.random.default_rng(4).integers(0, 4, w.shape).astype(np.float32)
    c[:8] = 2  # the first group of 8 rows: one code per channel
    s, z = closed_form_scale_zero(jnp.asarray(w), jnp.asarray(c), jnp.asarray(damped(h), jnp.float32), 8)
    assert np.isfinite(np.asarray(s)).all() and np.isfinite(np.asarray(z)).all()
    rows = lambda a: np.repeat(np.asarray(a, np.float64), 8, axis=0)
    got = np_objective(w, rows(s) * c + rows(z), damped(h))
    ws, wz = np_closed_form(w, c, damped(h), 8)
    np.testing.assert_allclose(got, np_objective(w, rows(ws) * c + rows(wz), damped(h)), rtol=1e-3)


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_on_a_fixed_grid_matches_the_reference_loop(act_order):
    w, h = problem(seed=5)
    h0 = damped(h)
    s, z = np_minmax(w, 2, 8)
    S, Z = np.repeat(s, 8, axis=0), np.repeat(z, 8, axis=0)
    got = gptq_on_grid(
        jnp.asarray(w),
        jnp.asarray(h0, jnp.float32),
        jnp.asarray(S, jnp.float32),
        jnp.asarray(Z, jnp.float32),
        3,
        act_order,
    )
    want = np_round_gptq(w, h0, S, Z, 3, act_order)
    assert (np.asarray(got) != want).mean() < 0.01  # float32 vs float64: a rare tie may round the other way


@pytest.mark.parametrize("bits, g, shrink", [(2, None, True), (2, 8, True), (3, 16, False), (2, 8, False)])
def test_decoupleq_matches_the_restatement_and_never_raises_the_objective(bits, g, shrink):
    w, h = problem(seed=6)
    codes, s, _z, f = decoupleq_codes(jnp.asarray(w), jnp.asarray(h, jnp.float32), bits, g, iters=3, shrink=shrink)
    f = np.asarray(f, np.float64)
    assert f.shape == (7, w.shape[1])
    assert (np.diff(f, axis=0) <= 1e-6 * f[:1]).all()  # monotone per channel
    assert (f[-1] < f[0]).all() and f[-1].sum() < 0.7 * f[0].sum()  # below round-to-nearest on the min-max grid
    assert int(np.asarray(codes).max()) <= 2**bits - 1 and s.shape == (w.shape[0] // (g or w.shape[0]), w.shape[1])
    want, want_f = np_decoupleq(w, h, bits, g or w.shape[0], 3, shrink=shrink)
    got = np.asarray(
        decoupleq(jnp.asarray(w), jnp.asarray(h, jnp.float32), bits, g, iters=3, shrink=shrink), np.float64
    )
    got_f = np_objective(w, got, damped(h))
    np.testing.assert_allclose(got_f, f[-1], rtol=1e-3)  # W̃ is s·C + z of the returned parts
    np.testing.assert_allclose(got_f.sum(), want_f.sum(), rtol=2e-2)  # same algorithm, float32 vs float64
    assert np.median(np.abs(got - want)) <= 1e-6


def test_decoupleq_beats_gptq_on_the_min_max_grid():
    """Rounds after the first only help: with iters=4 the objective is below a single (a) step's."""
    w, h = problem(seed=7)
    run = lambda iters: np.asarray(
        decoupleq_codes(jnp.asarray(w), jnp.asarray(h, jnp.float32), 2, 8, iters=iters, shrink=False)[3]
    )
    f1, f4 = run(1), run(4)
    assert f4[-1].sum() < f1[1].sum()  # f1[1]: after GPTQ on the min-max grid


@pytest.mark.parametrize("g", [32, 8])
def test_shrink_search_matches_the_reference_grid_search(g):
    w, h = problem(seed=8)
    h0 = damped(h)
    s, z = np_minmax(w, 2, g)
    got = shrink_search(jnp.asarray(w), jnp.asarray(h0, jnp.float32), jnp.asarray(s, jnp.float32),
                        jnp.asarray(z, jnp.float32), 3)  # fmt: skip
    want = np_shrink(w, h0, s, z, 3, g)
    np.testing.assert_allclose(np.asarray(got[0]), want[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got[1]), want[1], rtol=1e-5)
    assert (want[0] < s).any()  # some channel is shrunk: the search is not a no-op here


def test_bad_arguments_are_named():
    w, h = problem()
    with pytest.raises(ValueError, match=r"w \(in, out\) and h \(in, in\)"):
        decoupleq_codes(jnp.asarray(w), jnp.asarray(h[:4, :4]))
    with pytest.raises(ValueError, match="group_size 5 must divide the input dim 32"):
        decoupleq_codes(jnp.asarray(w), jnp.asarray(h), 2, 5)
    with pytest.raises(ValueError, match="iters must be ≥ 0"):
        decoupleq_codes(jnp.asarray(w), jnp.asarray(h), 2, None, iters=-1)


def test_the_block_stage_applies_s_codes_z_and_trains_only_s_z_and_norms():
    rng = np.random.default_rng(9)
    from bitjax.quant.block_recon import PROJECTIONS

    shapes = {b: {n: (8, 16) if n == "down_proj" else (16, 8) for n in names} for b, names in PROJECTIONS.items()}
    params = {b: {n: {"kernel": jnp.asarray(rng.standard_normal(sh), jnp.float32)} for n, sh in d.items()}
              for b, d in shapes.items()}  # fmt: skip
    params["input_layernorm"] = {"scale": jnp.ones(16)}
    stage = {"codes": {}, "s": {}, "z": {}}
    for b, d in shapes.items():
        for n, (i, o) in d.items():
            stage["codes"].setdefault(b, {})[n] = jnp.asarray(rng.integers(0, 4, (i, o)), jnp.uint8)
            stage["s"].setdefault(b, {})[n] = jnp.asarray(rng.uniform(0.1, 1, (2, o)), jnp.float32)  # groups of i/2
            stage["z"].setdefault(b, {})[n] = jnp.asarray(rng.standard_normal((2, o)), jnp.float32)
    from bitjax.quant.decoupleq import block_method

    method = block_method(stage)
    theta = method.init(params, 2, None)
    applied = method.apply(theta, params, 2, None)
    for b, n in ((b, n) for b, names in PROJECTIONS.items() for n in names):
        c, s, z = (np.asarray(stage[k][b][n], np.float64) for k in ("codes", "s", "z"))
        g = c.shape[0] // 2
        np.testing.assert_allclose(np.asarray(applied[b][n]["kernel"]), np.repeat(s, g, 0) * c + np.repeat(z, g, 0),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    tx = method.optimizer(theta, 10, 2)
    grads = jax.tree.map(jnp.ones_like, theta)
    updates, _ = tx.update(grads, tx.init(theta), theta)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["codes"]))  # frozen
    for key in ("s", "z", "norms"):  # Adam's first step: lr·sign(g) (plus the tiny L2 term)
        assert all(float(jnp.abs(u).min()) > 0.5e-5 for u in jax.tree.leaves(updates[key])), key
