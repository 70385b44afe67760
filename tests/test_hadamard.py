"""BitNet v2 (arXiv 2504.18415): the online Hadamard transform and H-BitLinear's activation quantizers,
against numpy restatements (scipy's Sylvester Hadamard matrix), gradients included; the method's recipe."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as scipy_linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from bitjax.quant import activations as A
from bitjax.quant import recipes
from bitjax.quant.hadamard import fwht, hadamard_block
from bitjax.quant.registry import QuantSpec


def hadamard_np(n):
    """The transform's matrix, restated: diag(H, …, H), H = scipy's Sylvester Hadamard of the largest
    power of two dividing n, over √ its size."""
    b = 1
    while n % (2 * b) == 0:
        b *= 2
    return scipy_linalg.block_diag(*[scipy_linalg.hadamard(b) / math.sqrt(b)] * (n // b))


@pytest.mark.parametrize("n", [1, 2, 64, 96, 384, 576, 1536])
def test_fwht_is_the_block_diagonal_sylvester_hadamard(n):
    x = np.random.default_rng(n).normal(size=(2, 3, n)).astype(np.float32)
    got = np.asarray(fwht(jnp.asarray(x)))
    np.testing.assert_allclose(got, x.astype(np.float64) @ hadamard_np(n), atol=2e-6 * math.log2(2 * n))
    # orthogonal and symmetric: applying it twice gives x back; norms are kept
    np.testing.assert_allclose(np.asarray(fwht(fwht(jnp.asarray(x)))), x, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert hadamard_block(n) == hadamard_np(n)[0].nonzero()[0].size


def test_fwht_spreads_an_outlier_channel():
    """The paper's point (Figure 1): one huge channel becomes a flat row, so absmax no longer crushes the rest."""
    x = np.zeros((1, 128), np.float32)
    x[0, 5] = 100.0
    y = np.asarray(fwht(jnp.asarray(x)))
    np.testing.assert_allclose(np.abs(y), 100.0 / math.sqrt(128), rtol=1e-6)


def _round_half_even(v):
    return np.round(v)  # numpy rounds half to even, as jnp.round


def _absmax_np(xr, bits):
    qp = 2 ** (bits - 1) - 1
    s = qp / np.maximum(np.abs(xr).max(-1, keepdims=True), 1e-5)
    return np.clip(_round_half_even(xr * s), -qp - 1, qp) / s, xr * s


def _absmean_np(xr, bits):
    qp = 2 ** (bits - 1) - 1
    beta = np.abs(xr).mean(-1, keepdims=True)
    u = math.sqrt(qp) * xr / (beta + 1e-5)
    return np.clip(_round_half_even(u), -qp - 1, qp) * beta / math.sqrt(qp), u


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(128, 8), (384, 8), (128, 4), (384, 4), (96, 4)]))
def test_h_bitlinear_inputs_match_numpy(seed, shape_bits):
    """Q_INT8(H·x) (absmax) and Q_INT4(H·x) (a4.8's absmean, β/√7 · RoundClip(√7·x/(β+ε), −8, 7)) per token."""
    n, bits = shape_bits
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, size=(4, n)) * rng.uniform(0.1, 10)).astype(np.float32)
    xr = x.astype(np.float64) @ hadamard_np(n)
    if bits == 8:
        ref, u = _absmax_np(xr, 8)
        got = np.asarray(A.hadamard_absmax_act(jnp.asarray(x), 8))
        step = np.abs(xr).max(-1, keepdims=True) / 127
    else:
        ref, u = _absmean_np(xr, 4)
        got = np.asarray(A.hadamard_absmean_act(jnp.asarray(x), 4))
        step = np.abs(xr).mean(-1, keepdims=True) / math.sqrt(7)
    # float32 vs float64 may round the other way only where u sits on a rounding boundary
    boundary = np.abs(np.abs(u - np.floor(u)) - 0.5) < 1e-4
    ok = np.isclose(got, ref, rtol=1e-5, atol=1e-5 * float(step.max())) | boundary
    assert ok.all(), (got[~ok], ref[~ok])


def test_gradient_is_the_transform_of_the_upstream_gradient():
    """STE through the rounding, exact through H: d/dx Σ g·Q(H·x) = g·Hᵀ = g·H (per token)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 384)).astype(np.float32)
    g = rng.normal(size=(3, 384)).astype(np.float32)
    H = hadamard_np(384)
    for fn in (A.hadamard_absmax_act, A.hadamard_absmean_act):
        dx = jax.grad(lambda v, fn=fn: jnp.sum(jnp.asarray(g) * fn(v)))(jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(dx), g.astype(np.float64) @ H.T, atol=2e-5)


def test_bitnet_v2_recipe_is_the_papers_scheme():
    """H-BitLinear on o_proj and down_proj (§2); INT8 from scratch, then INT4 for every projection."""
    a4, a8 = recipes.recipe("bitnet_v2"), recipes.recipe("bitnet_v2_a8")
    for role in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
        assert a4.spec(role) == QuantSpec("ternary_absmean", "absmean4")
        assert a8.spec(role) == QuantSpec("ternary_absmean", "absmax8")
    for role in ("o_proj", "down_proj"):
        assert a4.spec(role) == QuantSpec("ternary_absmean", "hadamard_absmean4")
        assert a8.spec(role) == QuantSpec("ternary_absmean", "hadamard_absmax8")
    assert recipes.plan("bitnet_v2", total_steps=1000) == [(0, "bitnet_v2_a8"), (950, "bitnet_v2")]
