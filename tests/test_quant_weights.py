"""Weight quantizers vs plain numpy restatements of the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitjax.quant import weights as W

EPS = 1e-5
shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))
scales = st.sampled_from([1e-7, 1e-3, 0.02, 1.0, 30.0])


def rand(shape, seed=0, scale=1.0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ---- numpy restatements -------------------------------------------------------------------
def np_ternary(w):  # HF transformers WeightQuant.forward, in numpy
    w32 = w.astype(np.float32)
    scale = np.float32(1.0) / np.maximum(np.abs(w32).mean(dtype=np.float32), np.float32(EPS))
    return (np.clip(np.round(w32 * scale), -1, 1) / scale).astype(w.dtype)


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def np_groups(w, granularity):
    """list of (index, block) over which one scale is computed."""
    n_in, n_out = w.shape
    if granularity == "tensor":
        return [(np.s_[:, :], w)]
    if granularity == "channel":
        return [(np.s_[:, j : j + 1], w[:, j : j + 1]) for j in range(n_out)]
    g = granularity
    return [(np.s_[i : i + g, j : j + 1], w[i : i + g, j : j + 1]) for i in range(0, n_in, g) for j in range(n_out)]


def np_rtn(w, bits, granularity, sym=False):
    """GPTQ's min-max Quantizer (IST-DASLab/gptq quant.py find_params + quantize), float32, per group."""
    maxq = 2**bits - 1
    out = np.zeros_like(w, dtype=np.float32)
    for idx, blk in np_groups(w.astype(np.float32), granularity):
        xmin, xmax = min(blk.min(), np.float32(0)), max(blk.max(), np.float32(0))
        if sym:
            xmax = max(abs(xmin), xmax)
            xmin = -xmax if xmin < 0 else xmin
        if xmin == 0 and xmax == 0:
            xmin, xmax = np.float32(-1), np.float32(1)
        scale = (xmax - xmin) / np.float32(maxq)
        zero = np.float32((maxq + 1) / 2) if sym else np.round(-xmin / scale)
        out[idx] = scale * (np.clip(np.round(blk / scale) + zero, 0, maxq) - zero)
    return out


# ---- BitNet b1.58 -------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(shape=shapes, scale=scales, seed=st.integers(0, 10_000))
def test_ternary_absmean_matches_hf_formula(shape, scale, seed):
    w = rand(shape, seed, scale)
    got = np.asarray(W.ternary_absmean(jnp.asarray(w)))
    ref = np_ternary(w)
    # Codes agree exactly; γ = mean|W| may differ in the last ulps because XLA, numpy and
    # torch each sum float32 in their own order: bounded by the worst-case summation error n·2⁻²⁴
    # (hypothesis found a 216-element case 9 ulps apart, above the 1e-6 this test used to allow).
    np.testing.assert_array_equal(np.sign(got), np.sign(ref))
    np.testing.assert_allclose(got, ref, rtol=max(1e-6, w.size * 2.0**-24), atol=0)


def test_ternary_values_are_minus_gamma_zero_gamma():
    w = rand((64, 48), 1)
    q = np.asarray(W.ternary_absmean(jnp.asarray(w)))
    gamma = np.float32(1) / (np.float32(1) / np.abs(w).mean())
    assert set(np.unique(q)) <= {np.float32(-gamma), np.float32(0), np.float32(gamma)}
    assert len(np.unique(q)) == 3  # all three levels are used on a Gaussian matrix


def test_ternary_half_rounds_to_even_like_torch():
    # W/γ = ±0.5 exactly must round to 0 (round half to even), ±1.5 to ±2 → clipped to ±1.
    w = np.array([[0.5, -0.5, 1.5, -1.5]], np.float32)  # mean|W| = 1.0 exactly
    np.testing.assert_array_equal(np.asarray(W.ternary_absmean(jnp.asarray(w))), [[0.0, -0.0, 1.0, -1.0]])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_ternary_low_precision_input_computed_in_float32(dtype):
    w16 = jnp.asarray(rand((32, 16), 2)).astype(dtype)
    got = W.ternary_absmean(w16)
    assert got.dtype == dtype
    ref = np_ternary(np.asarray(w16.astype(jnp.float32))).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(got.astype(jnp.float32)), np.asarray(jnp.asarray(ref).astype(dtype).astype(jnp.float32)), rtol=1e-2
    )
    # rounding to the low-precision grid happens once, at the end: 3 distinct values
    assert len(np.unique(np.asarray(got.astype(jnp.float32)))) == 3


def test_ternary_all_zero_weight_uses_eps_clamp():
    q = W.ternary_absmean(jnp.zeros((4, 4)))
    np.testing.assert_array_equal(np.asarray(q), np.zeros((4, 4)))


@pytest.mark.parametrize("granularity", ["channel", 4, "group8"])
def test_ternary_granularity(granularity):
    w = rand((16, 6), 3)
    g = W.parse_granularity(granularity)
    ref = np.zeros_like(w)
    for idx, blk in np_groups(w, g):
        inv = np.float32(1) / max(np.abs(blk).mean(dtype=np.float32), np.float32(EPS))
        ref[idx] = np.clip(np.round(blk * inv), -1, 1) / inv
    np.testing.assert_allclose(np.asarray(W.ternary_absmean(jnp.asarray(w), granularity)), ref, rtol=1e-6)


def test_ternary_codes_reconstruct_and_are_int_grid():
    w = jnp.asarray(rand((12, 10), 4))
    codes, gamma = W.ternary_absmean_codes(w)
    assert codes.dtype == jnp.int8 and set(np.unique(codes)) <= {-1, 0, 1}
    np.testing.assert_allclose(np.asarray(codes * gamma), np.asarray(W.ternary_absmean(w)), rtol=1e-6)


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="group size 5 does not divide the input dim 16"):
        W.ternary_absmean(jnp.ones((16, 4)), 5)
    with pytest.raises(ValueError, match="granularity"):
        W.ternary_absmean(jnp.ones((16, 4)), "rows")


def test_stacked_kernels_are_quantized_per_matrix():
    w = rand((3, 8, 5), 5) * np.array([0.1, 1.0, 10.0], np.float32)[:, None, None]
    got = np.asarray(W.ternary_absmean(jnp.asarray(w)))
    for i in range(3):
        np.testing.assert_allclose(got[i], np_ternary(w[i]), rtol=1e-6)


# ---- BitNet (1-bit) -----------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(shape=shapes, scale=scales, seed=st.integers(0, 10_000))
def test_binary_mean_matches_formula(shape, scale, seed):
    w = rand(shape, seed, scale) + np.float32(0.3 * scale)  # non-zero mean: centering matters
    beta = np.abs(w).mean(dtype=np.float32)
    ref = np_sign(w - w.mean(dtype=np.float32)) * beta
    np.testing.assert_allclose(np.asarray(W.binary_mean(jnp.asarray(w))), ref, rtol=1e-6)


def test_binary_values_are_plus_minus_beta_and_sign0_is_plus():
    w = np.array([[1.0, -1.0], [3.0, -3.0]], np.float32)  # mean 0 → W−α has no zeros; add one:
    w = np.array([[0.0, 2.0, -2.0]], np.float32)  # α = 0 → sign(0) = +1, β = 4/3
    q = np.asarray(W.binary_mean(jnp.asarray(w)))
    np.testing.assert_allclose(q, [[4 / 3, 4 / 3, -4 / 3]], rtol=1e-6)
    codes, _beta = W.binary_mean_codes(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(codes), [[1, 1, -1]])


def test_binary_mean_channel():
    w = rand((10, 4), 6) + 0.5
    ref = np.zeros_like(w)
    for j in range(4):
        c = w[:, j]
        ref[:, j] = np_sign(c - c.mean()) * np.abs(c).mean()
    np.testing.assert_allclose(np.asarray(W.binary_mean(jnp.asarray(w), "channel")), ref, rtol=1e-6)


# ---- FBI-LLM / Bi-Mamba -------------------------------------------------------------------
def test_fbi_sign_and_init_per_input_feature():
    """Reference BinaryLinearWscales 'column': torch weight (out, in), wscale/wbias (1, in)."""
    w = rand((9, 5), 7) + 0.2  # Flax kernel (in=9, out=5)
    wt = w.T  # torch's (out, in) weight
    beta = wt.mean(0, keepdims=True)  # (1, in): mean over outputs
    alpha = np.abs(wt - beta).mean(0, keepdims=True)  # (1, in)
    p = W.fbi_init(jnp.asarray(w))
    assert p["alpha"].shape == p["beta"].shape == (9,)
    np.testing.assert_allclose(np.asarray(p["beta"]), beta[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(p["alpha"]), alpha[0], rtol=1e-5)
    a, b = rand((9,), 8), rand((9,), 9)
    got = np.asarray(W.fbi_sign(jnp.asarray(w), jnp.asarray(a), jnp.asarray(b)))
    ref_torch = a[None, :] * np_sign(wt) + b[None, :]  # (out, in), scales broadcast over rows
    np.testing.assert_allclose(got, ref_torch.T, rtol=1e-6)


def test_fbi_axis_out_variant():
    w = rand((9, 5), 7)
    p = W.fbi_init(jnp.asarray(w), "out")
    np.testing.assert_allclose(np.asarray(p["beta"]), w.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(p["alpha"]), np.abs(w - w.mean(0)).mean(0), rtol=1e-5)
    a, b = rand((5,), 8), rand((5,), 9)
    got = np.asarray(W.fbi_sign(jnp.asarray(w), jnp.asarray(a), jnp.asarray(b), "out"))
    np.testing.assert_allclose(got, a[None] * np_sign(w) + b[None], rtol=1e-6)
    with pytest.raises(ValueError, match="fbi axis"):
        W.fbi_init(jnp.asarray(w), "row")


def test_fbi_learned_scales_get_exact_gradients():
    w, a, b, c = rand((7, 3), 1), rand((7,), 2), rand((7,), 3), rand((7, 3), 4)
    loss = lambda w, a, b: jnp.sum(W.fbi_sign(w, a, b) * c)
    gw, ga, gb = jax.grad(loss, argnums=(0, 1, 2))(*map(jnp.asarray, (w, a, b)))
    np.testing.assert_allclose(np.asarray(ga), (c * np_sign(w)).sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gb), c.sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), c * a[:, None], rtol=1e-6)  # identity STE through sign


# OneBit and PB-LLM: tests/test_quant_onebit_pbllm.py


# ---- RTN -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("granularity", ["channel", "tensor", 4])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_matches_reference_quantizer(bits, granularity, sym):
    w = rand((16, 6), bits) + np.float32(0.3)  # off-centre: the zero point matters
    w[:, 0] = np.abs(w[:, 0])  # an all-positive channel: the range is stretched to include 0
    w[:, 1] = 0.0  # an all-zero channel: the reference's [−1, 1] fallback
    got = np.asarray(W.rtn(jnp.asarray(w), bits, granularity, sym=sym))
    np.testing.assert_array_equal(got, np_rtn(w, bits, granularity, sym))
    codes, scale, zero = W.rtn_codes(jnp.asarray(w), bits, granularity, sym)
    assert codes.dtype == jnp.uint8 and int(codes.max()) <= 2**bits - 1
    np.testing.assert_array_equal(np.asarray(scale * (codes.astype(jnp.float32) - zero)), got)


def test_rtn_symmetric_tie_rounds_half_to_even_like_torch():
    # sym, 2 bits: scale = 2·max|W|/3 and zero = 2, so W = −max|W| sits at W/scale = −1.5 exactly and
    # torch.round sends it to −2 (code 0): only an exact division keeps that tie.
    w = np.array([[-0.041500617], [0.01], [0.03]], np.float32)
    codes, _scale, _zero = W.rtn_codes(jnp.asarray(w), 2, sym=True)
    np.testing.assert_array_equal(np.asarray(codes)[:, 0], [0, 2, 3])
    np.testing.assert_array_equal(np.asarray(W.rtn(jnp.asarray(w), 2, sym=True)), np_rtn(w, 2, "channel", True))


def test_rtn2_has_four_levels():
    w = rand((64, 8), 21)
    q = np.asarray(W.rtn(jnp.asarray(w), 2))
    _, scale, zero = map(np.asarray, W.rtn_codes(jnp.asarray(w), 2))
    for j in range(8):  # all of scale·({0, 1, 2, 3} − zero) are used, and 0 is one of them
        np.testing.assert_array_equal(np.unique(q[:, j]), scale[0, j] * (np.arange(4) - zero[0, j]))
        assert 0 <= zero[0, j] <= 3 and zero[0, j] == np.round(zero[0, j])


def test_rtn_clipped_gradient_is_one_on_the_representable_range():
    w, c = rand((32, 4), 22), rand((32, 4), 23)
    _, scale, zero = map(np.asarray, W.rtn_codes(jnp.asarray(w), 3, sym=True))
    lo, hi = scale * (0 - zero), scale * (7 - zero)  # sym clips the top: some weights lie above hi
    g = np.asarray(jax.grad(lambda w: jnp.sum(W.rtn(w, 3, sym=True, rule="clipped") * c))(jnp.asarray(w)))
    eps = 1e-4 * scale
    inside = (w >= lo + eps) & (w <= hi - eps)
    outside = (w < lo - eps) | (w > hi + eps)
    assert outside.any() and inside.any()
    np.testing.assert_array_equal(g[inside], c[inside])
    np.testing.assert_array_equal(g[outside], 0)


def test_rtn_rejects_bits():
    with pytest.raises(ValueError, match="2..8 bits"):
        W.rtn(jnp.ones((4, 4)), 1)
