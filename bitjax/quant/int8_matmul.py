"""Integer matmul of a quantized projection: int8 codes × int8 codes → int32, then one rescale.

When both quantizers of a :class:`~bitjax.quant.registry.QuantSpec` are integer-coded,
x̃_ti = c^x_ti · m^x_t (one multiplier per token) and W̃_io = c^w_io · m^w_o (one per tensor or
output channel), the fake-quant product factors as (BitNet eq. 8 / b1.58 §2's rescale):

    y_to = Σ_i x̃_ti · W̃_io = (Σ_i c^x_ti · c^w_io) · (m^x_t · m^w_o)

so the forward runs as an int8 dot with int32 accumulation (exact: |Σ| ≤ 128·in < 2^24 is also
exact in float32) and one float32 rescale, cast to the compute dtype. Only that rescale rounds.

The backward is the fake-quant path's, bit for bit: x̃ and W̃ (compute dtype) are rebuilt from the
int8 codes saved in the forward (half the bytes of a bf16 x̃), the vjp of the same einsum as
BitDense's (float32 accumulation) gives their cotangents, and the quantizers' own straight-through
rules (bitjax.quant.ste, reached through autodiff of `xq`, `wq`) carry them to x and W.

Integer-coded quantizers (codes fit int8):
  act    ``absmax<b>`` (b1.58; m^x = 1/s), ``topk_absmax<b>`` (a4.8's o_proj input; same form, dropped
         entries are code 0), ``absmean<b>`` (a4.8's INT4; m^x = β/√Qp), b ≤ 8;
  weight ``ternary_absmean`` with granularity 'tensor' or 'channel' (m^w = γ = 1/inv).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from bitjax.quant import activations as A
from bitjax.quant import weights as W
from bitjax.quant.registry import QuantSpec, act_kind, get_act_quantizer


@dataclasses.dataclass(frozen=True)
class IntForm:
    """codes(v) → (int8 codes, aux float32); value(codes, aux) → the fake-quant value in float32
    (bit for bit); mult(aux) → the multiplier m with value = codes·m (up to rounding)."""

    codes: Callable
    value: Callable
    mult: Callable


def _absmax_form(bits, keep=None):
    qp = 2 ** (bits - 1) - 1

    def codes(x):
        x32 = x.astype(jnp.float32)
        if keep is not None:  # a4.8 top-K: the absmax of the kept entries is that of x
            x32 = jnp.where(A.topk_mask(x, keep), x32, 0.0)
        s = A.absmax_scale(x32, qp)
        return jnp.clip(jnp.round(x32 * s), -qp - 1, qp).astype(jnp.int8), s

    return IntForm(codes, lambda c, s: A.exact_div(c.astype(jnp.float32), s), lambda s: 1.0 / s)


def _absmean_form(bits):
    qp = 2 ** (bits - 1) - 1

    def codes(x):
        c, beta = A.absmean_codes(x, bits)
        return c.astype(jnp.int8), beta

    return IntForm(
        codes,
        lambda c, beta: c.astype(jnp.float32) * (beta / math.sqrt(qp)),
        lambda beta: beta * jnp.float32(1 / math.sqrt(qp)),
    )


def _ternary_form(granularity):
    axes = (-2, -1) if granularity == "tensor" else (-2,)

    def codes(w):
        w32 = w.astype(jnp.float32)
        inv = W.absmean_inv(w32, axes)
        return jnp.clip(jnp.round(w32 * inv), -1, 1).astype(jnp.int8), inv

    return IntForm(codes, lambda c, inv: c.astype(jnp.float32) / inv, lambda inv: 1.0 / inv)


# The integer-coded quantizers, by registry name (bitjax.quant.registry): options → IntForm, or None where
# those options leave int8 (more than 8 bits; a weight granularity other than 'tensor' / 'channel').
_ACT_FORMS: dict[str, Callable[..., IntForm | None]] = {
    "absmax<b>": lambda bits: _absmax_form(bits) if bits <= 8 else None,
    "topk_absmax<b>": lambda bits, keep=0.5: _absmax_form(bits, keep) if bits <= 8 else None,
    "absmean<b>": lambda bits: _absmean_form(bits) if bits <= 8 else None,
}
_WEIGHT_FORMS: dict[str, Callable[..., IntForm | None]] = {
    "ternary_absmean": lambda granularity="tensor": (
        _ternary_form(granularity) if granularity in ("tensor", "channel") else None
    ),
}


def integer_forms(spec: QuantSpec) -> tuple[IntForm, IntForm]:
    """(activation form, weight form) of `spec`; ValueError naming the integer-coded quantizers otherwise."""
    _, fixed, _ = get_act_quantizer(spec.act)
    act_form, weight_form = _ACT_FORMS.get(act_kind(spec.act)), _WEIGHT_FORMS.get(spec.weight)
    act = act_form(**fixed, **dict(spec.act_options)) if act_form else None
    weight = weight_form(**dict(spec.weight_options)) if weight_form else None
    if act is None or weight is None:
        raise ValueError(
            f"int8 matmul needs integer-coded quantizers (act {', '.join(_ACT_FORMS)} with b ≤ 8; weight "
            f"{', '.join(_WEIGHT_FORMS)} with granularity 'tensor' or 'channel'); got {spec}"
        )
    return act, weight


def fake_quant_matmul(xq: jax.Array, wq: jax.Array) -> jax.Array:
    """x̃ (…, in) · W̃ (in, out) in their dtype with float32 accumulation, cast back (BitDense's matmul)."""
    return jnp.einsum("...i,io->...o", xq, wq, preferred_element_type=jnp.float32).astype(xq.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _int8_dot(forms, xq, wq, cx, ax, cw, aw):
    return _int8_dot_fwd(forms, xq, wq, cx, ax, cw, aw)[0]


def _int8_dot_fwd(forms, xq, wq, cx, ax, cw, aw):
    act, weight, _, _ = forms
    acc = lax.dot_general(cx, cw, (((cx.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    y = (acc.astype(jnp.float32) * (act.mult(ax) * weight.mult(aw))).astype(xq.dtype)
    return y, (cx, ax, cw, aw)  # int8 codes and scales only: x̃, W̃ are rebuilt in the backward


def _int8_dot_bwd(forms, res, g):
    act, weight, xdt, wdt = forms
    cx, ax, cw, aw = res
    xq = act.value(cx, ax).astype(xdt)  # = the fake-quant x̃ / W̃, bit for bit
    wq = weight.value(cw, aw).astype(wdt)
    dx, dw = jax.vjp(fake_quant_matmul, xq, wq)[1](g)
    return dx, dw, None, None, None, None


_int8_dot.defvjp(_int8_dot_fwd, _int8_dot_bwd)


def int8_matmul(xq: jax.Array, wq: jax.Array, x: jax.Array, w: jax.Array, spec: QuantSpec) -> jax.Array:
    """y = (c^x · c^w)·(m^x m^w) (…, out) in xq's dtype; gradients = those of fake_quant_matmul(xq, wq).

    Args:
      xq: x̃ = spec.quantize_act(x) (…, in), the compute dtype; carries the act STE.
      wq: W̃ = spec.quantize_weight(w) cast to the compute dtype (in, out); carries the weight STE.
      x, w: the quantizers' inputs (x: the activation as quantized; w: the latent kernel), from which the
        int8 codes and scales are taken (the same formulas as the fake-quant quantizers).
      spec: an integer-coded spec (:func:`integer_forms`).
    Forward values equal fake_quant_matmul(xq, wq) up to its float accumulation and the final rescale's
    rounding; xq and wq are not computed in the forward (only their gradient rules are used).
    """
    act, weight = integer_forms(spec)
    cx, ax = act.codes(lax.stop_gradient(x))
    cw, aw = weight.codes(lax.stop_gradient(w))
    return _int8_dot((act, weight, xq.dtype, wq.dtype), xq, wq, cx, ax, cw, aw)
