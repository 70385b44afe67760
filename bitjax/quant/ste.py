"""Gradient rules for quantizers (straight-through estimators).

Every quantizer in bitjax computes its forward value `q` with non-differentiable
ops (round, sign, clip) and hands the gradient rule to :func:`straight_through`:

    y = q            (forward)
    dy/dx = r'(u)    (backward, elementwise)

where `u` is the input expressed in the quantizer's unit range (e.g. W/γ for a
scaled weight, x·s/Qp for an activation) and `r'` is the selected rule:

* ``identity``    — plain STE (Bengio et al., 2013; BitNet eq. 9, b1.58's
                    ``w + (q - w).detach()``): r'(u) = 1.
* ``clipped``     — clipped STE (Courbariaux et al., 2016; Hubara et al., 2016
                    eq. 4): r'(u) = 1{|u| ≤ 1}.
* ``approx_sign`` — Bi-Real Net's ApproxSign (Liu et al., 2018, eq. 5–6):
                    F(u) = 2u − u·|u| on |u| < 1, sign(u) outside, so
                    r'(u) = (2 − 2|u|)·1{|u| < 1}.
* ``tanh``        — OneBit's SignSTEFunc (reference xuyuzhuang11/OneBit,
                    models/bitnet.py l. 14–23): r'(u) = 1.001 − tanh(u)²
                    (tanh's derivative with a 1e-3 floor, no clipping).

Scales (γ, β, s) are treated as constants in the backward pass, as in the
BitNet reference code; learnable scales (FBI α/β, OneBit g/h) sit outside the
straight-through op and receive their exact gradients from autodiff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def _approx_sign(u):
    a = jnp.abs(u)
    return jnp.where(a < 1, 2 - 2 * a, 0).astype(u.dtype)


def _tanh(u):
    t = jnp.tanh(u.astype(jnp.float32))
    return (1.001 - t * t).astype(u.dtype)


# name → r'(u), elementwise (the module docstring gives each rule's paper and formula)
_RULES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": jnp.ones_like,
    "clipped": lambda u: (jnp.abs(u) <= 1).astype(u.dtype),
    "approx_sign": _approx_sign,
    "tanh": _tanh,
}
GRADIENT_RULES = tuple(_RULES)


def get_rule(rule: str) -> Callable[[jax.Array], jax.Array]:
    """The derivative r' of gradient rule `rule`; ValueError listing the known rules otherwise."""
    if rule not in _RULES:
        raise ValueError(f"unknown gradient rule {rule!r}; choose one of {GRADIENT_RULES}")
    return _RULES[rule]


def rule_derivative(rule: str, u: jax.Array) -> jax.Array:
    """r'(u) of a gradient rule, elementwise (same shape and dtype as `u`)."""
    return get_rule(rule)(u)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ste(rule, x, q, u):
    del x, u
    return q


def _ste_fwd(rule, x, q, u):
    # identity needs nothing saved; the others save u (one array of x's size).
    return q, None if rule == "identity" else u


def _ste_bwd(rule, u, g):
    # g has q's dtype, which straight_through makes equal to x's dtype.
    gx = g if rule == "identity" else g * rule_derivative(rule, u).astype(g.dtype)
    return gx, jnp.zeros_like(g), None if u is None else jnp.zeros_like(u)


_ste.defvjp(_ste_fwd, _ste_bwd)


def straight_through(x: jax.Array, q: jax.Array, u: jax.Array | None = None, rule: str = "identity") -> jax.Array:
    """Return `q` in the forward pass; dq/dx = r'(u) in the backward pass.

    Args:
      x: the differentiable input, any shape.
      q: the quantized value, same shape as `x` (its own graph is cut).
      u: `x` in the quantizer's unit range (same shape); unused for ``identity``.
      rule: one of :data:`GRADIENT_RULES`.
    """
    get_rule(rule)
    if rule == "identity":
        u = None
    elif u is None:
        raise ValueError(f"gradient rule {rule!r} needs the normalized input u")
    else:
        u = jax.lax.stop_gradient(u)
    return _ste(rule, x, jax.lax.stop_gradient(q.astype(x.dtype)), u)
