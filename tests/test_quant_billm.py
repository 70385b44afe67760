"""BiLLM vs a literal numpy restatement of the authors' code (Aaronhuang-778/BiLLM: bigptq.py
``BRAGPTQ.fasterquant``, binary.py ``high_order_residual``, utils/structure.py, utils/autosearch.py
``structural_searching``, utils/mask.py ``generate_structural_mask``), in the (in, out) layout, float32
like the reference; and BiLLM's point: a lower proxy loss than plain 1-bit α·sign(W)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant.billm import billm, residual_binarize
from bitjax.quant.gptq import hessian


def np_high_order_residual(x, mask, order):
    """binary.py: per output channel, nan-masked mean-shifted sign, `order` residual passes.

    torch.sign(nan) = 0 makes the reference's contribution outside the mask 0; np.where says so here.
    """
    total = np.zeros_like(x)
    for _ in range(order):
        masked = np.where(mask, x * mask - total, np.nan)
        with warnings.catch_warnings():  # nanmean of an empty channel warns; the reference maps it to 0
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nan_to_num(np.nanmean(masked, axis=0))
            masked = masked - mean
            scale = np.nan_to_num(np.nanmean(np.abs(masked), axis=0))
        total = total + np.where(mask, np.sign(masked) * scale + mean, 0)
    return total.astype(np.float32)


def np_structural_searching(s, up_lim):
    """autosearch.py: salient row count, then the break-point among 81 quantiles (first minimum wins)."""
    counts = np.abs(s).sum(axis=1)
    order = np.argsort(-counts, kind="stable")  # topk
    best, best_r = np.inf, None
    for r in range(1, min(up_lim - 1, s.shape[0]) + 1):  # the reference: range(1, up_lim)
        m3 = np.zeros(s.shape, bool)
        m3[order[:r]] = True
        err = np.mean((s - np_high_order_residual(s, m3, 2) - np_high_order_residual(s, ~m3, 2)) ** 2)
        if err < best:
            best, best_r = err, r
    m3 = np.zeros(s.shape, bool)
    m3[order[:best_r]] = True
    g3 = np_high_order_residual(s, m3, 2)
    rest = np.abs(s * ~m3)
    splits = np.quantile(rest.ravel(), np.linspace(0.10, 0.90, 81).astype(np.float32))
    best, best_p = np.inf, None
    for p in splits:
        m1, m2 = (rest < p) & ~m3, (rest >= p) & ~m3
        err = np.mean((s - np_high_order_residual(s, m1, 1) - np_high_order_residual(s, m2, 1) - g3) ** 2)
        if err < best:
            best, best_p = err, p
    return (rest < best_p) & ~m3, (rest >= best_p) & ~m3, m3


def np_billm(W, H, block=128, damp=0.01, metric="hessian", up_lim=50):
    W, H = W.astype(np.float32).copy(), H.astype(np.float64).copy()
    n = W.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead] = 0
    H += damp * np.mean(np.diag(H)) * np.eye(n)
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)  # upper, H⁻¹ = UᵀU
    for a in range(0, n, block):
        b = min(a + block, n)
        W1, d = W[a:b].copy(), np.diag(U)[a:b, None]
        s = W1**2 / d**2 if metric == "hessian" else W1
        m1, m2, m3 = np_structural_searching(s, up_lim)
        Q1 = np_high_order_residual(W1, m1, 1) + np_high_order_residual(W1, m2, 1) + np_high_order_residual(W1, m3, 2)
        Err1 = (W1 - Q1) / d  # no update inside the block
        W[a:b] = Q1
        W[b:] -= U[a:b, b:].T @ Err1
    return W


def problem(n_in=256, n_out=32, seed=0, dead=()):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, n_in)) @ rng.standard_normal((n_in, n_in)) * 0.3  # correlated inputs
    x[:, list(dead)] = 0
    w = rng.standard_normal((n_in, n_out)) * 0.02
    w[rng.integers(0, n_in, 6)] *= 8  # a few outlier input rows: what the salient search finds
    return w.astype(np.float32), np.asarray(hessian(jnp.asarray(x, jnp.float32)))


def proxy_loss(w_hat, w, h):
    d = np.asarray(w_hat, np.float64) - w
    return float(np.trace(d.T @ h @ d))


@pytest.mark.parametrize(
    "n_in, block, dead, metric",
    [
        (256, 128, (), "hessian"),
        (256, 128, (3, 130), "hessian"),  # dead inputs
        (200, 128, (), "hessian"),  # last block of 72 rows
        (160, 128, (), "hessian"),  # last block of 32 < up_lim rows: r ranges over 1..32
        (192, 64, (), "magnitude"),
        (96, 128, (), "hessian"),  # fewer input rows than one block: a single short block
    ],
)
def test_matches_reference_algorithm(n_in, block, dead, metric):
    w, h = problem(n_in, seed=n_in + block, dead=dead)
    got = np.asarray(billm(jnp.asarray(w), jnp.asarray(h), block, salient_metric=metric))
    ref = np_billm(w, h, block, metric=metric)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert np.isfinite(got).all() and got.dtype == np.float32


def test_block_values_are_binary_per_group():
    """Per block and output channel: ≤ 2 values (concentrated) + 2 (sparse) + 4 (salient, two passes)."""
    w, h = problem(seed=7)
    got = np.asarray(billm(jnp.asarray(w), jnp.asarray(h)))
    for a in (0, 128):
        assert max(len(np.unique(got[a : a + 128, j])) for j in range(w.shape[1])) <= 8
    assert len(np.unique(got[:128, 0])) > 2  # and more than one group is used


def test_residual_binarize_is_mean_shifted_sign():
    x = np.array([[1.0, 5.0], [3.0, 0.0], [8.0, -2.0]], np.float32)
    mask = np.array([[True, False], [True, True], [False, True]])
    got = np.asarray(residual_binarize(jnp.asarray(x), jnp.asarray(mask), 1))
    # column 0: {1, 3}: μ = 2, α = 1 → {1, 3}; column 1: {0, −2}: μ = −1, α = 1 → {0, −2}
    np.testing.assert_array_equal(got, [[1, 0], [3, 0], [0, -2]])
    np.testing.assert_allclose(got, np_high_order_residual(x, mask, 1))


def test_beats_plain_binarization_on_the_proxy_loss():
    w, h = problem(seed=11)
    q = np.asarray(billm(jnp.asarray(w), jnp.asarray(h)))
    plain = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(0)  # per-channel α·sign(W), α = mean|W|
    assert proxy_loss(q, w, h) < 0.5 * proxy_loss(plain, w, h)


def test_bad_inputs_are_named():
    w, h = problem(64)
    with pytest.raises(ValueError, match=r"w \(in, out\) and h \(in, in\)"):
        billm(jnp.asarray(w), jnp.asarray(h[:10, :10]))
    with pytest.raises(ValueError, match="block_size"):
        billm(jnp.asarray(w), jnp.asarray(h), 0)
    with pytest.raises(ValueError, match="salient_metric"):
        billm(jnp.asarray(w), jnp.asarray(h), salient_metric="random")
