"""GPTQ vs a literal numpy restatement of the reference implementation (IST-DASLab/gptq: gptq.py
``GPTQ.fasterquant`` on quant.py's ``Quantizer``; Frantar et al., 2023, Algorithm 1), and its defining
properties."""

import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant.gptq import gptq, gptq_codes, hessian
from bitjax.quant.weights import rtn


def np_find_params(x, maxq, sym):
    """quant.py ``Quantizer.find_params`` per output channel of x (rows, out), in float32 as the reference."""
    x = x.astype(np.float32)
    xmin = np.minimum(x.min(0), np.float32(0))
    xmax = np.maximum(x.max(0), np.float32(0))
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both = (xmin == 0) & (xmax == 0)
    xmin, xmax = np.where(both, np.float32(-1), xmin), np.where(both, np.float32(1), xmax)
    scale = (xmax - xmin) / np.float32(maxq)
    zero = np.full_like(scale, (maxq + 1) / 2) if sym else np.round(-xmin / scale)
    return scale, zero


def np_codes(w, scale, zero, maxq):
    """quant.py ``quantize`` before the final scale·(q − zero): q = clamp(round(w/scale) + zero, 0, maxq)."""
    return np.clip(np.round(w.astype(np.float32) / scale) + zero, 0, maxq)


def np_gptq(W, H, bits, group=None, damp=0.01, act_order=False, sym=False, block=128, static_groups=False):
    """``fasterquant`` in the (in, out) layout: lazy blocks of `block` rows; group params from the global W
    (with `static_groups`, every group's params up front from the dead-zeroed W, by original row)."""
    maxq = 2**bits - 1
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    n = W.shape[0]
    scale, zero = np_find_params(W, maxq, sym)  # before the dead rows are zeroed, as the reference
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    if static_groups:
        groups = [np_find_params(W[i : i + group], maxq, sym) for i in range(0, n, group)]
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n)
    W, H = W[perm], H[perm][:, perm]
    H += damp * np.mean(np.diag(H)) * np.eye(n)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper, H⁻¹ = UᵀU
    Q, S, Z = np.zeros_like(W), np.zeros_like(W), np.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, Err1 = W[i1:i2].copy(), np.zeros((i2 - i1, W.shape[1]))
        for i in range(i2 - i1):
            if group and static_groups:  # the original group of the row visited now
                scale, zero = groups[perm[i1 + i] // group]
            elif group and (i1 + i) % group == 0:  # from W, which only the earlier blocks have updated
                scale, zero = np_find_params(W[i1 + i : i1 + i + group], maxq, sym)
            Q[i1 + i], S[i1 + i], Z[i1 + i] = np_codes(W1[i], scale, zero, maxq), scale, zero
            err = (W1[i] - scale * (Q[i1 + i] - zero)) / U[i1 + i, i1 + i]
            W1[i:] -= np.outer(U[i1 + i, i1 + i : i2], err)
            Err1[i] = err
        W[i2:] -= U[i1:i2, i2:].T @ Err1
    inv = np.argsort(perm)
    return Q[inv], S[inv], Z[inv]


def problem(n_in=64, n_out=48, seed=0, dead=()):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, n_in)) @ rng.standard_normal((n_in, n_in)) * 0.3  # correlated inputs
    x[:, list(dead)] = 0
    w = rng.standard_normal((n_in, n_out)) * 0.02 + 0.004  # off-centre: the zero point matters
    return w.astype(np.float32), np.asarray(hessian(jnp.asarray(x, jnp.float32)))


def proxy_loss(w_hat, w, h):
    d = np.asarray(w_hat, np.float64) - w
    return float(np.trace(d.T @ h @ d))


@pytest.mark.parametrize(
    "bits, group, act_order, dead, sym, block",
    [
        (4, None, False, (), False, 128),
        (3, 16, False, (), False, 128),
        (2, None, True, (), True, 128),
        (3, 16, True, (3, 40), False, 32),
        (8, 32, False, (0,), True, 128),
        (4, 16, False, (), True, 24),
    ],
)
def test_matches_reference_algorithm(bits, group, act_order, dead, sym, block):
    w, h = problem(dead=dead)
    codes, scales, zeros = gptq_codes(
        jnp.asarray(w), jnp.asarray(h), bits, group, act_order=act_order, sym=sym, block_size=block
    )
    ref_codes, ref_scales, ref_zeros = np_gptq(w, h, bits, group, act_order=act_order, sym=sym, block=block)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    np.testing.assert_allclose(np.asarray(scales), ref_scales, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(zeros), ref_zeros)
    assert codes.dtype == jnp.uint8 and int(codes.max()) <= 2**bits - 1
    if dead:  # dead inputs are zeroed, and 0 is on the grid
        np.testing.assert_array_equal(ref_codes[list(dead)], ref_zeros[list(dead)])
    got = np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), bits, group, act_order=act_order, sym=sym, block_size=block))
    np.testing.assert_allclose(got, ref_scales * (ref_codes - ref_zeros), rtol=1e-5, atol=1e-9)


def test_group_params_see_only_earlier_blocks():
    """The reference's stale in-block W: a group starting mid-block gets other params than at a block start."""
    w, h = problem(seed=4)
    a = np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), 3, 16, block_size=16))
    b = np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), 3, 16, block_size=64))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), 3, 16, block_size=128)))


@pytest.mark.parametrize("bits, dead, block", [(3, (), 128), (2, (5, 17), 24), (4, (), 32)])
def test_static_groups_match_the_reference_with_act_order(bits, dead, block):
    """``static_groups``: grids fixed up front per original group; rows visited in diag-H order."""
    w, h = problem(seed=6, dead=dead)
    got = gptq_codes(jnp.asarray(w), jnp.asarray(h), bits, 16, act_order=True, block_size=block, static_groups=True)
    want = np_gptq(w, h, bits, 16, act_order=True, block=block, static_groups=True)
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    np.testing.assert_allclose(np.asarray(got[1]), want[1], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got[2]), want[2])
    # every original group of 16 rows shares one (scale, zero) per channel: the ordinary packed layout
    s = np.asarray(got[1]).reshape(4, 16, -1)
    assert (s == s[:, :1]).all()
    # the dynamic groups of act_order alone are consecutive in diag-H order instead: not so in the original
    s_dyn = np.asarray(gptq_codes(jnp.asarray(w), jnp.asarray(h), bits, 16, act_order=True, block_size=block)[1])
    assert not (s_dyn.reshape(4, 16, -1) == s_dyn.reshape(4, 16, -1)[:, :1]).all()


@pytest.mark.parametrize("bits, group, sym", [(2, None, False), (3, None, True), (4, 16, False)])
def test_error_feedback_beats_round_to_nearest(bits, group, sym):
    w, h = problem(seed=1)
    q_gptq = gptq(jnp.asarray(w), jnp.asarray(h), bits, group, sym=sym)
    q_rtn = rtn(jnp.asarray(w), bits, "channel" if group is None else group, sym=sym)
    assert proxy_loss(q_gptq, w, h) < 0.8 * proxy_loss(q_rtn, w, h)


@pytest.mark.parametrize("sym", [False, True])
def test_uncorrelated_inputs_reduce_to_rtn(sym):
    """With diagonal H, U is diagonal: no error is propagated and GPTQ is RTN on the same grid."""
    w, _ = problem(seed=2)
    h = np.diag(np.random.default_rng(3).uniform(0.5, 2.0, w.shape[0])).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(gptq(jnp.asarray(w), jnp.asarray(h), 3, sym=sym)),
        np.asarray(rtn(jnp.asarray(w), 3, "channel", sym=sym)),
    )


def test_two_bits_use_four_levels():
    """The asymmetric 2-bit grid has 4 levels per channel (the old symmetric one was ternary)."""
    w, h = problem(seed=5)
    codes, _, _ = gptq_codes(jnp.asarray(w), jnp.asarray(h), 2)
    assert set(np.unique(np.asarray(codes))) == {0, 1, 2, 3}
    assert max(len(np.unique(c)) for c in np.asarray(rtn(jnp.asarray(w), 2)).T) == 4


def test_bad_shapes_are_named():
    w, h = problem()
    with pytest.raises(ValueError, match=r"w \(in, out\) and h \(in, in\)"):
        gptq_codes(jnp.asarray(w), jnp.asarray(h[:10, :10]))
    with pytest.raises(ValueError, match="group_size 10 must divide the input dim 64"):
        gptq_codes(jnp.asarray(w), jnp.asarray(h), 4, 10)
    with pytest.raises(ValueError, match="supports 2..8 bits"):
        gptq_codes(jnp.asarray(w), jnp.asarray(h), 1)


def np_add_batch(batches):
    """The reference's ``GPTQ.add_batch`` (gptq.py) over calibration batches, each (b, L, in) or (L, in):
    H ← H·n/(n + b); n += b; x ← √(2/n)·x; H += x xᵀ, with b the batch's sequence count (1 for 2-D)."""
    H, n = 0.0, 0
    for inp in batches:
        inp = inp[None] if inp.ndim == 2 else inp
        tmp = inp.shape[0]
        x = inp.reshape(-1, inp.shape[-1]).T.astype(np.float64)
        H = H * n / (n + tmp)
        n += tmp
        x = np.sqrt(2 / n) * x
        H = H + x @ x.T
    return H


def test_hessian_is_normalised_per_sequence_as_the_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16, 8)).astype(np.float32)
    want = np_add_batch([x[:2], x[2:5], x[5:]])  # in three batches: the running mean equals one pass
    np.testing.assert_allclose(np.asarray(hessian(jnp.asarray(x))), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(hessian(jnp.asarray(x[0]))), np_add_batch([x[0]]), rtol=1e-5)


def test_gptq_with_dead_inputs_equals_the_reference_from_its_calibration_inputs():
    """With dead inputs (H_ii := 1) the scale of H matters: from the same X, W̃ equals the reference's."""
    rng = np.random.default_rng(1)
    x = 0.05 * rng.standard_normal((4, 32, 64)).astype(np.float32)  # small activations: diag H ≪ 1
    x[..., ::2] = 0  # half the inputs dead: their H_ii := 1 dominates the damping's mean(diag H)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    H = np_add_batch([x])
    Q, S, Z = np_gptq(w, H, 3)
    got = gptq(jnp.asarray(w), hessian(jnp.asarray(x)), 3)
    np.testing.assert_allclose(np.asarray(got), S * (Q - Z), atol=1e-4)
