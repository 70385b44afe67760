"""Name → quantizer registry, so a config string picks each piece independently.

A :class:`QuantSpec` is what a layer is configured with: a weight quantizer, an
activation quantizer and a gradient rule, each chosen by name, plus options.

Names (the same in configs, code and docs)
------------------------------------------
weight: ``none`` | ``ternary_absmean`` | ``binary_mean`` | ``fbi`` (option ``axis``) |
        ``onebit`` | ``pb_llm`` | ``rtn<k>`` (k = 2..8, e.g. ``rtn4``; options ``granularity``, ``sym``) |
        ``e2e_qp<k>`` (EfficientQAT's E2E-QP: the kernel's k-bit codes frozen, the step sizes learned;
        option ``granularity``) | ``paretoq<k>`` (ParetoQ, k = 1, 158 (1.58 bits), 2, 3, 4: a learned
        step per output channel, SEQ / LSQ with the reference's gradients)
act:    ``none`` | ``absmax<b>`` (e.g. ``absmax8``) | ``absmean<b>`` (a4.8's INT4, ``absmean4``) |
        ``topk_absmax<b>`` (a4.8's Q_INT8(TopK(x)), option ``keep``) |
        ``absmax_v1_<b>`` (BitNet v1, option ``granularity``) |
        ``hadamard_absmax<b>`` / ``hadamard_absmean<b>`` (BitNet v2's H-BitLinear: the per-token
        Hadamard transform, then absmax / absmean; the layer's weight lives in the rotated basis)
grad:   ``identity`` | ``clipped`` | ``approx_sign``
norm:   ``none`` | ``rms`` (HF AutoBitLinear's affine RMSNorm) | ``layer`` (BitNet v1's LayerNorm
        without affine parameters), applied to the layer's input inside BitDense.
out_norm: ``none`` | ``layer``: OneBit's affine-free LayerNorm on the layer's output, before any bias.
        ``weight=onebit`` always has it (it is part of OneBit's layer); the key adds it to any other
        layer, e.g. an FP control for OneBit (``*_proj: out_norm=layer`` on ``fp``).

Which layer gets which spec is a recipe (:mod:`bitjax.quant.recipes`, with the named methods).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax

from bitjax.quant import activations as A
from bitjax.quant import weights as W
from bitjax.quant.ste import get_rule


@dataclasses.dataclass(frozen=True)
class WeightQuantizer:
    """fn(w, **learned, rule=, **options) → W̃; init(w, **options) → learned params (or None).

    learned_axes(**options) says which kernel axis each learned vector runs along ('in' | 'out'), or
    'group' for a (G, out) matrix of per-group values (G groups of input rows).
    state(w, **options) → frozen, kernel-shaped layer state computed once at init (PB-LLM's mask and
    8-bit salient values), passed to fn as keyword arguments and never trained.
    output_norm: applied by the layer to the matmul's output (OneBit's affine-free LayerNorm).
    """

    fn: Callable[..., jax.Array]
    init: Callable[..., dict] | None = None
    options: tuple[str, ...] = ()
    learned_axes: Callable[..., Mapping[str, str]] = lambda **_: {}
    codes: Callable[..., tuple] | None = None
    state: Callable[..., dict] | None = None
    output_norm: Callable[[jax.Array], jax.Array] | None = None
    sign_codes: bool = True  # with `init` and no `codes`: the integer form is sign(W) and the learned params


def _identity_weight(w, rule="identity"):
    del rule
    return w


_WEIGHTS: dict[str, WeightQuantizer] = {
    "none": WeightQuantizer(_identity_weight),
    "ternary_absmean": WeightQuantizer(W.ternary_absmean, options=("granularity",), codes=W.ternary_absmean_codes),
    "binary_mean": WeightQuantizer(W.binary_mean, options=("granularity",), codes=W.binary_mean_codes),
    "fbi": WeightQuantizer(
        W.fbi_sign,
        init=lambda w, axis="in", **_: W.fbi_init(w, axis),
        options=("axis",),
        learned_axes=lambda axis="in", **_: {"alpha": axis, "beta": axis},
    ),
    "onebit": WeightQuantizer(
        W.onebit,
        init=lambda w, **_: W.onebit_init(w),
        learned_axes=lambda **_: {"g": "in", "h": "out"},
        output_norm=W.onebit_layernorm,
    ),
    "pb_llm": WeightQuantizer(
        W.pb_llm, options=("salient_frac", "salient_bits", "criterion"), state=lambda w, **o: W.pb_llm_init(w, **o)
    ),
}

WEIGHT_NAMES = tuple(_WEIGHTS) + ("rtn<k>", "e2e_qp<k>", "paretoq<k>")


@dataclasses.dataclass(frozen=True)
class ActQuantizer:
    """fn(x, bits=, rule=, **options) → x̃ (bitjax.quant.activations); fn None: the identity ('none')."""

    fn: Callable[..., jax.Array] | None
    options: tuple[str, ...] = ()


# Activation quantizers are named '<stem><b>' with b = bits in 2..16 (absmax8, absmax_v1_8), or 'none'.
_ACTS: dict[str, ActQuantizer] = {
    "absmax": ActQuantizer(A.absmax_act),
    "absmean": ActQuantizer(A.absmean_act),
    "topk_absmax": ActQuantizer(A.topk_absmax_act, ("keep",)),
    "absmax_v1_": ActQuantizer(A.absmax_v1_act, ("granularity",)),
    "hadamard_absmax": ActQuantizer(A.hadamard_absmax_act),
    "hadamard_absmean": ActQuantizer(A.hadamard_absmean_act),
}
ACT_NAMES = ("none", *(f"{stem}<b>" for stem in _ACTS))
NORMS = ("none", "rms", "layer")
OUT_NORMS = {"none": None, "layer": W.onebit_layernorm}


def get_weight_quantizer(name: str) -> tuple[WeightQuantizer, dict]:
    """Resolve a weight-quantizer name to (quantizer, fixed kwargs)."""
    if name in _WEIGHTS:
        return _WEIGHTS[name], {}
    m = re.fullmatch(r"rtn([2-8])", name or "")
    if m:
        return WeightQuantizer(W.rtn, options=("granularity", "sym"), codes=W.rtn_codes), {"bits": int(m[1])}
    m = re.fullmatch(r"paretoq(1|158|2|3|4)", name or "")
    if m:
        from bitjax.quant import paretoq  # ParetoQ's quantizers and their custom gradients, in its module

        bits = 1.58 if m[1] == "158" else int(m[1])
        pq = WeightQuantizer(
            paretoq.paretoq,
            init=lambda w, bits, **_: paretoq.paretoq_init(w, bits),
            learned_axes=lambda **_: {"alpha": "out"},
            sign_codes=False,
        )
        return pq, {"bits": bits}
    m = re.fullmatch(r"e2e_qp([2-8])", name or "")
    if m:
        from bitjax.quant import efficientqat  # E2E-QP is EfficientQAT's second stage, in its module

        e2e = WeightQuantizer(
            efficientqat.e2e_qp,
            init=efficientqat.e2e_qp_init,
            options=("granularity",),
            learned_axes=lambda **_: {"dstep": "group"},
            sign_codes=False,
        )
        return e2e, {"bits": int(m[1])}
    raise ValueError(f"unknown weight quantizer {name!r}; choose one of {WEIGHT_NAMES}")


def act_kind(name: str) -> str:
    """The registry name of activation quantizer `name`: 'absmax8' → 'absmax<b>', 'none' → 'none'."""
    if name == "none":
        return name
    m = re.fullmatch(r"(.*?)(\d+)", name or "")
    if m and m[1] in _ACTS and 2 <= int(m[2]) <= 16:
        return f"{m[1]}<b>"
    raise ValueError(f"unknown activation quantizer {name!r}; choose one of {ACT_NAMES} (b = bits in 2..16)")


def get_act_quantizer(name: str) -> tuple[Callable[..., jax.Array] | None, dict, tuple[str, ...]]:
    """Resolve an activation-quantizer name to (fn or None for 'none', fixed kwargs, options)."""
    if act_kind(name) == "none":
        return None, {}, ()
    stem, bits = re.fullmatch(r"(.*?)(\d+)", name).groups()
    return _ACTS[stem].fn, {"bits": int(bits)}, _ACTS[stem].options


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
    """`rule` if it is a gradient rule (bitjax.quant.ste), else ValueError listing them."""
    get_rule(rule)
    return rule


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """What one BitDense does: in-layer norm → activation quantizer → matmul with the quantized weight.

    `weight_options` / `act_options` are (key, value) tuples (hashable, so a spec
    can be static under jit), e.g. (("granularity", "channel"),) or (("keep", 0.5),).
    """

    weight: str = "none"
    act: str = "none"
    grad: str = "identity"
    weight_options: tuple[tuple[str, Any], ...] = ()
    act_options: tuple[tuple[str, Any], ...] = ()
    norm: str = "none"
    out_norm: str = "none"

    def __post_init__(self):  # validate eagerly: a typo fails at config time, not at compile
        wq, _ = get_weight_quantizer(self.weight)
        _, _, act_opts = get_act_quantizer(self.act)
        check_rule(self.grad)
        if self.norm not in NORMS:
            raise ValueError(f"unknown in-layer norm {self.norm!r}; choose one of {NORMS}")
        if self.out_norm not in OUT_NORMS:
            raise ValueError(f"unknown output norm {self.out_norm!r}; choose one of {tuple(OUT_NORMS)}")
        for key, _ in self.weight_options:
            if key not in wq.options:
                raise ValueError(
                    f"weight quantizer {self.weight!r} has no option {key!r}; its options are {wq.options}"
                )
        for key, _ in self.act_options:
            if key not in act_opts:
                raise ValueError(f"activation quantizer {self.act!r} has no option {key!r}; its options are {act_opts}")

    @property
    def is_fp(self) -> bool:
        return self.weight == "none" and self.act == "none" and self.norm == "none" and self.out_norm == "none"

    def __str__(self) -> str:
        """'weight=ternary_absmean, act=absmax8' (non-default fields, the recipe syntax)."""
        if self.is_fp:
            return "fp"
        parts = [
            f"weight={self.weight}",
            *(f"weight.{k}={v}" for k, v in self.weight_options),
            f"act={self.act}",
            *(f"act.{k}={v}" for k, v in self.act_options),
        ]
        parts += [f"norm={self.norm}"] if self.norm != "none" else []
        parts += [f"out_norm={self.out_norm}"] if self.out_norm != "none" else []
        parts += [f"grad={self.grad}"] if self.grad != "identity" else []
        return ", ".join(parts)

    def weight_quantizer(self) -> tuple[WeightQuantizer, dict]:
        wq, fixed = get_weight_quantizer(self.weight)
        return wq, {**fixed, **dict(self.weight_options)}

    def output_norm(self) -> Callable[[jax.Array], jax.Array] | None:
        """The norm the layer applies to its matmul output: the weight quantizer's own (OneBit's), else
        `out_norm`'s, else None."""
        return self.weight_quantizer()[0].output_norm or OUT_NORMS[self.out_norm]

    def init_learned(self, w: jax.Array) -> dict[str, tuple[jax.Array, str]]:
        """Learned quantizer params initialised from kernel w: {name: (value, 'in' | 'out' axis)}."""
        wq = get_weight_quantizer(self.weight)[0]
        if wq.init is None:
            return {}
        wq, opts = self.weight_quantizer()
        axes = wq.learned_axes(**opts)
        return {k: (v, axes[k]) for k, v in wq.init(w, **opts).items()}

    def init_state(self, w: jax.Array) -> dict[str, jax.Array]:
        """Frozen quantizer state computed once from kernel w (kernel-shaped; {} for most quantizers)."""
        wq = get_weight_quantizer(self.weight)[0]
        return {} if wq.state is None else dict(wq.state(w, **dict(self.weight_options)))

    def quantize_weight(self, w: jax.Array, **learned) -> jax.Array:
        wq, kwargs = self.weight_quantizer()
        return wq.fn(w, **learned, rule=self.grad, **kwargs)

    def quantize_act(self, x: jax.Array) -> jax.Array:
        fn, fixed, _ = get_act_quantizer(self.act)
        if fn is None:
            return x
        return fn(x, rule=self.grad, **fixed, **dict(self.act_options))
