"""GPTQ vs a literal numpy restatement of Algorithm 1 (Frantar et al., 2023), and its defining property."""

import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant.gptq import gptq, gptq_codes, hessian
from bitjax.quant.weights import rtn


def np_gptq(W, H, bits, group=None, damp=0.01, act_order=False):
    """Algorithm 1 row by row in float64, kernel (in, out): quantize row i, push its error to rows > i."""
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    n, qp = W.shape[0], 2 ** (bits - 1) - 1
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n)
    W, H = W[perm], H[perm][:, perm]
    H += damp * np.mean(np.diag(H)) * np.eye(n)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper, H⁻¹ = UᵀU
    Q, S = np.zeros_like(W), np.zeros_like(W)
    s = np.maximum(np.abs(W).max(0), 1e-5) / qp
    for i in range(n):
        if group and i % group == 0:
            s = np.maximum(np.abs(W[i:i + group]).max(0), 1e-5) / qp
        Q[i] = np.clip(np.round(W[i] / s), -qp - 1, qp)
        S[i] = s
        err = (W[i] - Q[i] * s) / U[i, i]
        W[i + 1:] -= np.outer(U[i, i + 1:], err)
    inv = np.argsort(perm)
    return Q[inv], S[inv]


def problem(n_in=64, n_out=48, seed=0, dead=()):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, n_in)) @ rng.standard_normal((n_in, n_in)) * 0.3  # correlated inputs
    x[:, list(dead)] = 0
    w = rng.standard_normal((n_in, n_out)) * 0.02
    return w.astype(np.float32), np.asarray(hessian(jnp.asarray(x, jnp.float32)))


def proxy_loss(w_hat, w, h):
    d = np.asarray(w_hat, np.float64) - w
    return float(np.trace(d.T @ h @ d))


@pytest.mark.parametrize("bits, group, act_order, dead", [
    (4, None, False, ()), (3, 16, False, ()), (2, None, True, ()), (3, 16, True, (3, 40)), (8, 32, False, (0,)),
])
def test_matches_numpy_algorithm(bits, group, act_order, dead):
    w, h = problem(dead=dead)
    codes, scales = gptq_codes(jnp.asarray(w), jnp.asarray(h), bits, group, act_order=act_order)
    ref_codes, ref_scales = np_gptq(w, h, bits, group, act_order=act_order)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    np.testing.assert_allclose(np.asarray(scales), ref_scales, rtol=1e-5)
    assert codes.dtype == jnp.int8
    assert np.asarray(codes).min() >= -(2 ** (bits - 1)) and np.asarray(codes).max() <= 2 ** (bits - 1) - 1
    if dead:
        assert not np.asarray(codes)[list(dead)].any()  # dead inputs are zeroed
    np.testing.assert_allclose(np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), bits, group, act_order=act_order)),
                               ref_codes * ref_scales, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("bits, group", [(2, None), (3, None), (4, 16)])
def test_error_feedback_beats_round_to_nearest(bits, group):
    w, h = problem(seed=1)
    q_gptq = gptq(jnp.asarray(w), jnp.asarray(h), bits, group)
    q_rtn = rtn(jnp.asarray(w), bits, "channel" if group is None else group)
    assert proxy_loss(q_gptq, w, h) < 0.8 * proxy_loss(q_rtn, w, h)


def test_uncorrelated_inputs_reduce_to_rtn():
    """With diagonal H, U is diagonal: no error is propagated and GPTQ is RTN on the same grid."""
    w, _ = problem(seed=2)
    h = np.diag(np.random.default_rng(3).uniform(0.5, 2.0, w.shape[0])).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), 3)),
                                  np.asarray(rtn(jnp.asarray(w), 3, "channel")))


def test_bad_shapes_are_named():
    w, h = problem()
    with pytest.raises(ValueError, match=r"w \(in, out\) and h \(in, in\)"):
        gptq_codes(jnp.asarray(w), jnp.asarray(h[:10, :10]))
    with pytest.raises(ValueError, match="group_size 10 must divide the input dim 64"):
        gptq_codes(jnp.asarray(w), jnp.asarray(h), 4, 10)
    with pytest.raises(ValueError, match="supports 2..8 bits"):
        gptq_codes(jnp.asarray(w), jnp.asarray(h), 1)
