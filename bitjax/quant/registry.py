"""Name → quantizer registry, so a config string picks each piece independently.

A :class:`QuantSpec` is what a layer is configured with: a weight quantizer, an
activation quantizer and a gradient rule, each chosen by name, plus options.

Names (the same in configs, code and docs)
------------------------------------------
weight: ``none`` | ``ternary_absmean`` | ``binary_mean`` | ``fbi`` | ``onebit`` |
        ``pb_llm`` | ``billm`` | ``rtn<k>`` (k = 2..8, e.g. ``rtn4``)
act:    ``none`` | ``absmax<b>`` (e.g. ``absmax8``, ``absmax4``) |
        ``topk_absmax<b>`` (a4.8's Q_INT8(TopK(x)), option ``keep``) |
        ``absmax_v1_<b>`` (BitNet v1's [−Qb+ε, Qb−ε] range)
grad:   ``identity`` | ``clipped`` | ``approx_sign``

Methods (:data:`METHODS`) bundle these into the named recipes: ``fp``,
``bitnet``, ``b158``, ``a48``, ``fbi``, ``bimamba``, ``onebit``, ``pb_llm``,
``billm``, ``rtn<k>``.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any, Callable, Mapping

import jax

from bitjax.quant import activations as A
from bitjax.quant import weights as W
from bitjax.quant.ste import GRADIENT_RULES


@dataclasses.dataclass(frozen=True)
class WeightQuantizer:
    """fn(w, **learned, rule=, **options) → W̃; init(w) → learned params (or None)."""
    fn: Callable[..., jax.Array]
    init: Callable[[jax.Array], dict] | None = None
    options: tuple[str, ...] = ()
    # Which kernel axis each learned vector runs along: 'in' or 'out'.
    learned_axes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    codes: Callable[..., tuple] | None = None


def _identity_weight(w, rule="identity"):
    del rule
    return w


_WEIGHTS: dict[str, WeightQuantizer] = {
    "none": WeightQuantizer(_identity_weight),
    "ternary_absmean": WeightQuantizer(W.ternary_absmean, options=("granularity",),
                                       codes=W.ternary_absmean_codes),
    "binary_mean": WeightQuantizer(W.binary_mean, options=("granularity",),
                                   codes=W.binary_mean_codes),
    "fbi": WeightQuantizer(W.fbi_sign, init=W.fbi_init,
                           learned_axes={"alpha": "out", "beta": "out"}),
    "onebit": WeightQuantizer(W.onebit, init=W.onebit_init, learned_axes={"g": "in", "h": "out"}),
    "pb_llm": WeightQuantizer(W.pb_llm, options=("salient_frac", "salient_bits")),
    "billm": WeightQuantizer(W.billm, options=("salient_frac", "n_split")),
}

WEIGHT_NAMES = tuple(_WEIGHTS) + ("rtn<k>",)
ACT_NAMES = ("none", "absmax<b>", "topk_absmax<b>", "absmax_v1_<b>")


def get_weight_quantizer(name: str) -> tuple[WeightQuantizer, dict]:
    """Resolve a weight-quantizer name to (quantizer, fixed kwargs)."""
    if name in _WEIGHTS:
        return _WEIGHTS[name], {}
    m = re.fullmatch(r"rtn([2-8])", name or "")
    if m:
        return WeightQuantizer(W.rtn, options=("granularity",), codes=W.rtn_codes), {"bits": int(m[1])}
    raise ValueError(f"unknown weight quantizer {name!r}; choose one of {WEIGHT_NAMES}")


def get_act_quantizer(name: str) -> tuple[Callable[..., jax.Array] | None, dict, tuple[str, ...]]:
    """Resolve an activation-quantizer name to (fn or None for 'none', fixed kwargs, options)."""
    if name == "none":
        return None, {}, ()
    for pattern, fn, options in ((r"absmax(\d+)", A.absmax_act, ()),
                                 (r"topk_absmax(\d+)", A.topk_absmax_act, ("keep",)),
                                 (r"absmax_v1_(\d+)", A.absmax_v1_act, ())):
        m = re.fullmatch(pattern, name or "")
        if m and 2 <= int(m[1]) <= 16:
            return fn, {"bits": int(m[1])}, options
    raise ValueError(f"unknown activation quantizer {name!r}; choose one of {ACT_NAMES} "
                     f"(b = bits in 2..16)")


def parse_options(text: str | None) -> tuple[tuple[str, Any], ...]:
    """'granularity=channel,keep=0.5' → (('granularity', 'channel'), ('keep', 0.5)); '' or None → ().

    Values are Python literals when they parse as one (ints, floats, bools), strings otherwise:
    the form quantizer options take on the command line and in `get_config(arg)` strings.
    """
    out = []
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {item!r} is not key=value (in {text!r})")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        out.append((key.strip(), value))
    return tuple(out)


def check_rule(rule: str) -> str:
    if rule not in GRADIENT_RULES:
        raise ValueError(f"unknown gradient rule {rule!r}; choose one of {GRADIENT_RULES}")
    return rule


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """What one BitDense does: weight quantizer, activation quantizer, gradient rule.

    `weight_options` / `act_options` are (key, value) tuples (hashable, so a spec
    can be static under jit), e.g. (("granularity", "channel"),) or (("keep", 0.5),).
    """
    weight: str = "none"
    act: str = "none"
    grad: str = "identity"
    weight_options: tuple[tuple[str, Any], ...] = ()
    act_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):  # validate eagerly: a typo fails at config time, not at compile
        wq, _ = get_weight_quantizer(self.weight)
        _, _, act_opts = get_act_quantizer(self.act)
        check_rule(self.grad)
        for key, _ in self.weight_options:
            if key not in wq.options:
                raise ValueError(f"weight quantizer {self.weight!r} has no option {key!r}; "
                                 f"its options are {wq.options}")
        for key, _ in self.act_options:
            if key not in act_opts:
                raise ValueError(f"activation quantizer {self.act!r} has no option {key!r}; "
                                 f"its options are {act_opts}")

    @property
    def is_fp(self) -> bool:
        return self.weight == "none" and self.act == "none"

    def weight_quantizer(self) -> tuple[WeightQuantizer, dict]:
        wq, fixed = get_weight_quantizer(self.weight)
        return wq, {**fixed, **dict(self.weight_options)}

    def quantize_weight(self, w: jax.Array, **learned) -> jax.Array:
        wq, kwargs = self.weight_quantizer()
        return wq.fn(w, **learned, rule=self.grad, **kwargs)

    def quantize_act(self, x: jax.Array) -> jax.Array:
        fn, fixed, _ = get_act_quantizer(self.act)
        if fn is None:
            return x
        return fn(x, rule=self.grad, **fixed, **dict(self.act_options))


# Named recipes. `act` quantizes the inputs of attention/FFN projections (q/k/v,
# gate/up); `act_inner` the intermediate states (o_proj and down_proj inputs).
METHODS: dict[str, dict[str, Any]] = {
    "fp": dict(weight="none", act="none", act_inner="none"),
    # BitNet (Wang et al., 2023): LayerNorm inside BitLinear, v1 absmax range.
    "bitnet": dict(weight="binary_mean", act="absmax_v1_8", act_inner="absmax_v1_8", norm="layer"),
    # BitNet b1.58 (Ma et al., 2024): ternary absmean weights, per-token int8 absmax.
    "b158": dict(weight="ternary_absmean", act="absmax8", act_inner="absmax8"),
    # BitNet a4.8 (Wang et al., 2024): int4 inputs, top-K sparsified int8 intermediates.
    "a48": dict(weight="ternary_absmean", act="absmax4", act_inner="topk_absmax8",
                act_inner_options=(("keep", 0.5),)),
    # FBI-LLM (Ma et al., 2024) / Bi-Mamba (Tang et al., 2024): learnable column α, β; FP acts.
    "fbi": dict(weight="fbi", act="none", act_inner="none"),
    "bimamba": dict(weight="fbi", act="none", act_inner="none"),
    "onebit": dict(weight="onebit", act="none", act_inner="none"),
    "pb_llm": dict(weight="pb_llm", act="none", act_inner="none"),
    "billm": dict(weight="billm", act="none", act_inner="none"),
    **{f"rtn{k}": dict(weight=f"rtn{k}", act="none", act_inner="none") for k in (2, 3, 4, 8)},
}


def method_specs(method: str, grad: str = "identity", **overrides) -> tuple[QuantSpec, QuantSpec, str | None]:
    """(spec for input projections, spec for intermediate projections, in-layer norm) of a method.

    `overrides` may replace weight/act/act_inner/norm and their options, so any
    registry combination can be built from a named starting point.
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {tuple(METHODS)}")
    m = {**METHODS[method], **{k: v for k, v in overrides.items() if v is not None}}
    outer = QuantSpec(m["weight"], m["act"], grad, tuple(m.get("weight_options", ())),
                      tuple(m.get("act_options", ())))
    inner = QuantSpec(m["weight"], m["act_inner"], grad, tuple(m.get("weight_options", ())),
                      tuple(m.get("act_inner_options", ())))
    return outer, inner, m.get("norm")
