"""Gradient rules: jax.grad of each quantizer equals the rule's definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant import activations as A
from bitjax.quant import weights as W
from bitjax.quant.ste import rule_derivative, straight_through


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def np_rule(rule, u):
    if rule == "identity":
        return np.ones_like(u)
    if rule == "clipped":
        return (np.abs(u) <= 1).astype(np.float32)
    return np.where(np.abs(u) < 1, 2 - 2 * np.abs(u), 0).astype(np.float32)  # Bi-Real ApproxSign'


@pytest.mark.parametrize("rule", ["identity", "clipped", "approx_sign"])
def test_rule_derivative_curve(rule):
    u = np.linspace(-2, 2, 81).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rule_derivative(rule, jnp.asarray(u))), np_rule(rule, u), atol=1e-6)


def test_approx_sign_is_derivative_of_bireal_polynomial():
    # F(u) = 2u + u² (u < 0), 2u − u² (u ≥ 0) on |u| < 1 (Bi-Real eq. 5); check F' numerically.
    u = np.linspace(-0.99, 0.99, 50)
    F = lambda u: 2 * u - u * np.abs(u)
    num = (F(u + 1e-5) - F(u - 1e-5)) / 2e-5
    np.testing.assert_allclose(np.asarray(rule_derivative("approx_sign", jnp.asarray(u, jnp.float32))), num, atol=1e-3)


@pytest.mark.parametrize("rule", ["identity", "clipped", "approx_sign"])
def test_ternary_gradient_rule(rule):
    w, c = rand((8, 6), 1) * 2, rand((8, 6), 2)
    g = jax.grad(lambda w: jnp.sum(W.ternary_absmean(w, rule=rule) * c))(jnp.asarray(w))
    u = w / np.abs(w).mean()
    np.testing.assert_allclose(np.asarray(g), c * np_rule(rule, u), rtol=1e-5, atol=1e-6)
    if rule == "clipped":
        assert (np.asarray(g) == 0).any()  # some |W/γ| > 1 really are masked


@pytest.mark.parametrize("rule", ["identity", "clipped", "approx_sign"])
def test_binary_gradient_rule(rule):
    w, c = rand((8, 6), 3), rand((8, 6), 4)
    g = jax.grad(lambda w: jnp.sum(W.binary_mean(w, rule=rule) * c))(jnp.asarray(w))
    u = (w - w.mean()) / np.abs(w).mean()
    np.testing.assert_allclose(np.asarray(g), c * np_rule(rule, u), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["identity", "clipped", "approx_sign"])
def test_absmax_gradient_rule(rule):
    x, c = rand((3, 10), 5), rand((3, 10), 6)
    g = jax.grad(lambda x: jnp.sum(A.absmax_act(x, 8, rule) * c))(jnp.asarray(x))
    u = x / np.abs(x).max(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(g), c * np_rule(rule, u), rtol=1e-5, atol=1e-6)


def test_rtn_clipped_gradient_and_fbi_sign_clipped():
    w, c = rand((8, 4), 7) * 3, rand((8, 4), 8)
    g = jax.grad(lambda w: jnp.sum(W.fbi_sign(w, jnp.ones(8), jnp.zeros(8), rule="clipped") * c))(jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(g), c * (np.abs(w) <= 1), rtol=1e-6)


def test_topk_gradient_bypasses_quantizer_and_mask():
    """a4.8 §2.2: the STE passes the upstream gradient to every entry, dropped ones included."""
    x, c = rand((2, 10), 9), rand((2, 10), 10)
    g = np.asarray(jax.grad(lambda x: jnp.sum(A.topk_absmax_act(x, 0.3) * c))(jnp.asarray(x)))
    assert (~np.asarray(A.topk_mask(jnp.asarray(x), 0.3))).any()  # some entries were dropped
    np.testing.assert_array_equal(g, c)


def test_absmean_clipped_gradient_masks_outside_the_int4_range():
    x, c = rand((3, 16), 11) ** 3, rand((3, 16), 12)  # heavy tails: some |√7·x/β| > 7
    g = np.asarray(jax.grad(lambda x: jnp.sum(A.absmean_act(x, 4, "clipped") * c))(jnp.asarray(x)))
    u = np.sqrt(7) * x / (np.abs(x).mean(-1, keepdims=True) + 1e-5) / 7
    assert (np.abs(u) > 1).any() and (np.abs(u) <= 1).any()
    np.testing.assert_allclose(g, c * (np.abs(u) <= 1), rtol=1e-6)


def test_straight_through_validates():
    with pytest.raises(
        ValueError,
        match=r"unknown gradient rule 'magic'; choose one of \('identity', 'clipped', 'approx_sign', 'tanh'\)",
    ):
        straight_through(jnp.ones(2), jnp.ones(2), rule="magic")
    with pytest.raises(ValueError, match=r"unknown gradient rule 'magic'; choose one of \('identity'"):
        rule_derivative("magic", jnp.ones(2))
    with pytest.raises(ValueError, match="needs the normalized input"):
        straight_through(jnp.ones(2), jnp.ones(2), None, "clipped")


def test_composes_with_jit_vmap_grad():
    w = jnp.asarray(rand((4, 8, 6), 11))
    f = lambda w: W.ternary_absmean(w, rule="clipped")
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(w)), np.asarray(f(w)))
    np.testing.assert_array_equal(np.asarray(jax.vmap(f)(w)), np.stack([np.asarray(f(m)) for m in w]))
    gv = jax.vmap(jax.grad(lambda m: jnp.sum(f(m) ** 2)))(w)
    gl = np.stack([np.asarray(jax.grad(lambda m: jnp.sum(f(m) ** 2))(m)) for m in w])
    np.testing.assert_allclose(np.asarray(gv), gl, rtol=1e-6)
    x = jnp.asarray(rand((4, 5, 16), 12))
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(A.absmax_act))(x)), np.asarray(A.absmax_act(x)), rtol=1e-6)


def test_bf16_gradients_keep_dtype():
    w = jnp.asarray(rand((8, 8), 13)).astype(jnp.bfloat16)
    g = jax.grad(lambda w: jnp.sum(W.ternary_absmean(w, rule="approx_sign").astype(jnp.float32)))(w)
    assert g.dtype == jnp.bfloat16
