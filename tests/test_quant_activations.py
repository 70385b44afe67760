"""Activation quantizers vs numpy restatements (HF ActQuant, BitNet v1 eq. 4, a4.8 top-K)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitjax.quant import activations as A
from bitjax.quant.registry import get_act_quantizer

EPS = 1e-5


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def np_scale(x, qp):
    # HF's `127 / x.abs().max(...)`: PyTorch evaluates scalar / tensor as reciprocal(tensor) * scalar
    return np.float32(qp) * (np.float32(1) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(EPS)))


def np_absmax(x, bits):  # HF transformers ActQuant.forward (bits = 8), in torch's evaluation order
    qp = 2 ** (bits - 1) - 1
    s = np_scale(x, qp)
    return np.clip(np.round(x * s), -qp - 1, qp) / s


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 40)),
    bits=st.sampled_from([2, 4, 8]),
    scale=st.sampled_from([1e-8, 1e-2, 1.0, 100.0]),
    seed=st.integers(0, 9999),
)
def test_absmax_matches_formula_exactly(shape, bits, scale, seed):
    x = rand(shape, seed, scale)
    qp = 2 ** (bits - 1) - 1
    s = np_scale(x, qp)
    codes, got_s = A.absmax_codes(jnp.asarray(x), bits)
    # max is order-independent: scale, integer codes and dequantized values are all bit-exact
    np.testing.assert_array_equal(np.asarray(got_s), s)
    np.testing.assert_array_equal(np.asarray(codes), np.clip(np.round(x * s), -qp - 1, qp))
    np.testing.assert_array_equal(np.asarray(A.absmax_act(jnp.asarray(x), bits)), np_absmax(x, bits))
    np.testing.assert_array_equal(
        np.asarray(jax.jit(A.absmax_act, static_argnums=1)(jnp.asarray(x), bits)), np_absmax(x, bits)
    )


@pytest.mark.parametrize("bits", [4, 8])
def test_absmax_codes_on_integer_grid(bits):
    x = jnp.asarray(rand((6, 33), 1))
    codes, s = A.absmax_codes(x, bits)
    qp = 2 ** (bits - 1) - 1
    assert int(codes.min()) >= -qp - 1 and int(codes.max()) <= qp
    assert int(jnp.abs(codes).max()) == qp  # the absmax element maps to ±Qp
    np.testing.assert_allclose(np.asarray(codes / s), np.asarray(A.absmax_act(x, bits)), rtol=1e-6)


def test_absmax_is_per_token():
    x = rand((2, 8), 2)
    x[1] *= 1000.0
    got = np.asarray(A.absmax_act(jnp.asarray(x)))
    np.testing.assert_array_equal(got[0], np_absmax(x[:1], 8)[0])


def test_absmax_bf16_in_bf16_out():
    x = jnp.asarray(rand((3, 16), 3)).astype(jnp.bfloat16)
    got = A.absmax_act(x)
    assert got.dtype == jnp.bfloat16
    ref = np_absmax(np.asarray(x.astype(jnp.float32)), 8)
    np.testing.assert_array_equal(
        np.asarray(got.astype(jnp.float32)), np.asarray(jnp.asarray(ref).astype(jnp.bfloat16).astype(jnp.float32))
    )


@pytest.mark.parametrize("keep", [0.25, 0.5, 1.0])
def test_topk_absmax_matches_formula(keep):
    x = rand((4, 20), 4)
    k = int(np.ceil(keep * 20))
    kth = -np.sort(-np.abs(x), axis=-1)[:, k - 1 : k]
    sparse = np.where(np.abs(x) >= kth, x, 0.0).astype(np.float32)
    got = np.asarray(A.topk_absmax_act(jnp.asarray(x), keep, 8))
    np.testing.assert_array_equal(got, np_absmax(sparse, 8))
    assert ((got != 0).sum(-1) <= k).all()


def test_topk_rejects_bad_keep():
    with pytest.raises(ValueError, match="keep fraction"):
        A.topk_absmax_act(jnp.ones((2, 4)), 0.0)


def np_absmax_v1(x, bits, axis=-1):  # BitNet v1 eq. 4 on the b-bit range [−Qb, Qb − 1]
    qb = 2 ** (bits - 1)
    gamma = np.maximum(np.abs(x).max(axis, keepdims=True), EPS)
    return np.clip(np.round(x * (qb / gamma)), -qb, qb - 1) * (gamma / qb)


@pytest.mark.parametrize("bits", [4, 8])
def test_absmax_v1_matches_paper_equation_with_2_to_the_b_levels(bits):
    x = rand((64, 17), 5)
    got = np.asarray(A.absmax_v1_act(jnp.asarray(x), bits))
    np.testing.assert_allclose(got, np_absmax_v1(x, bits), rtol=1e-6)
    gamma = np.abs(x).max(-1, keepdims=True)
    codes = np.round(got * 2 ** (bits - 1) / gamma)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1  # b bits, not b + 1
    tensor = np.asarray(A.absmax_v1_act(jnp.asarray(x), bits, "tensor"))
    np.testing.assert_allclose(tensor, np_absmax_v1(x, bits, axis=None), rtol=1e-6)


def np_absmean(x, bits):  # a4.8 eq. 2: β/√Qp · RoundClip(√Qp·x/(β+ε), −Qp−1, Qp), β = mean|x| per token
    qp = 2 ** (bits - 1) - 1
    beta = np.abs(x).mean(-1, keepdims=True)
    return beta / np.sqrt(qp) * np.clip(np.round(np.sqrt(qp) * x / (beta + EPS)), -qp - 1, qp)


@pytest.mark.parametrize("bits", [4, 8])
def test_absmean_matches_a48_equation(bits):
    x = rand((8, 64), 6) * np.array([[0.01], [1], [100], [1], [1], [1], [1], [1]], np.float32)
    x[3, 5] = 40.0  # an outlier: clipped at Qp
    got = np.asarray(A.absmean_act(jnp.asarray(x), bits))
    np.testing.assert_allclose(got, np_absmean(x, bits), rtol=1e-5, atol=1e-7)
    codes, beta = A.absmean_codes(jnp.asarray(x), bits)
    qp = 2 ** (bits - 1) - 1
    assert int(codes.min()) >= -qp - 1 and int(codes.max()) <= qp and int(codes[3, 5]) == qp
    np.testing.assert_allclose(np.asarray(codes * beta / np.sqrt(qp)), got, rtol=1e-5, atol=1e-7)
    assert len(np.unique(got[1])) <= 2**bits


def test_bits_validated():
    with pytest.raises(ValueError, match="activation bits"):
        A.absmax_act(jnp.ones((2, 2)), 1)


@pytest.mark.parametrize("name", ["absmin8", "absmax1", "absmax_v2_8", ""])
def test_an_unknown_activation_quantizer_is_refused_naming_the_known_ones(name):
    with pytest.raises(
        ValueError,
        match=rf"unknown activation quantizer '{name}'; choose one of \('none', 'absmax<b>', 'absmean<b>', "
        r"'topk_absmax<b>', 'absmax_v1_<b>', 'hadamard_absmax<b>', 'hadamard_absmean<b>'\) \(b = bits in 2..16\)",
    ):
        get_act_quantizer(name)
    assert get_act_quantizer("absmax_v1_8")[1:] == ({"bits": 8}, ("granularity",))
    assert get_act_quantizer("topk_absmax4")[1:] == ({"bits": 4}, ("keep",))
