"""Quantization recipes: which :class:`QuantSpec` each layer *role* gets, and the named methods.

A model names the role of each quantizable layer (a transformer: ``q_proj k_proj v_proj o_proj
gate_proj up_proj down_proj embed lm_head``; a Mamba block: ``in_proj out_proj``) and asks the recipe
for its spec. A recipe is an ordered list of rules written in one syntax, used alike by the methods
below, by ``--config.model.quant.rules`` and in what the trainer prints and stores::

    PATTERN: key=value, key=value; PATTERN: ...

PATTERN is an fnmatch pattern over role names, with ``|`` for alternatives (``*_proj``,
``q_proj|k_proj|v_proj``). Keys: ``weight``, ``act``, ``grad``, ``norm``, ``out_norm`` (names, see
:mod:`bitjax.quant.registry`) and ``weight.<option>`` / ``act.<option>`` for quantizer options
(``act.keep=0.25``, ``weight.granularity=group128``). A role's spec starts full precision and every
matching rule, in order, updates the fields it names (naming a quantizer resets that quantizer's
options), so later rules refine earlier ones — in the spirit of qwix's rules.

A method (:data:`METHODS`) is a recipe plus, optionally, a first training stage run with another
method (BitNet a4.8 trains W1.58A8 first, then switches to its hybrid scheme).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Iterable
from typing import Any

from bitjax.quant.registry import QuantSpec, parse_options

SPEC_KEYS = ("weight", "act", "grad", "norm", "out_norm")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One `PATTERN: key=value, …` rule: `updates` are (key, value) pairs in the order written."""

    pattern: str
    updates: tuple[tuple[str, Any], ...]

    def matches(self, role: str) -> bool:
        return any(fnmatch.fnmatchcase(role, p.strip()) for p in self.pattern.split("|"))

    def apply(self, spec: QuantSpec) -> QuantSpec:
        fields = dataclasses.asdict(spec)
        opts = {"weight": dict(spec.weight_options), "act": dict(spec.act_options)}
        for key, value in self.updates:
            if key in SPEC_KEYS:
                fields[key] = value
                opts.get(key, {}).clear()  # a new quantizer starts from its own defaults
            else:
                opts[key.split(".", 1)[0]][key.split(".", 1)[1]] = value
        fields["weight_options"] = tuple(opts["weight"].items())
        fields["act_options"] = tuple(opts["act"].items())
        return QuantSpec(**fields)

    def __str__(self) -> str:
        return f"{self.pattern}: " + ", ".join(f"{k}={v}" for k, v in self.updates)


@functools.cache  # a rules string is parsed once per process: every model, stage and check reuses it
def parse_rules(text: str | None) -> tuple[Rule, ...]:
    """'o_proj: act=topk_absmax8, act.keep=0.5; down_proj: act=absmax8' → rules ('' → ()); immutable."""
    rules = []
    for chunk in filter(str.strip, (text or "").split(";")):
        pattern, sep, body = chunk.partition(":")
        if not sep or not pattern.strip():
            raise ValueError(
                f"quantization rule {chunk.strip()!r} is not 'PATTERN: key=value, …' (e.g. 'o_proj: act=absmax8')"
            )
        updates = parse_options(body.replace(" ", ""))
        if not updates:
            raise ValueError(f"quantization rule {chunk.strip()!r} sets nothing")
        for key, _ in updates:
            head, dot, opt = key.partition(".")
            if not (key in SPEC_KEYS or (dot and head in ("weight", "act") and opt)):
                raise ValueError(
                    f"quantization rule {chunk.strip()!r}: unknown key {key!r}; use "
                    f"{', '.join(SPEC_KEYS)}, weight.<option> or act.<option>"
                )
        rules.append(Rule(pattern.strip().replace(" ", ""), tuple(updates)))
    return tuple(rules)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Ordered rules; :meth:`spec` folds the matching ones over a full-precision spec."""

    rules: tuple[Rule, ...] = ()
    grad: str = "identity"

    def spec(self, role: str) -> QuantSpec:
        spec = QuantSpec(grad=self.grad)
        for rule in self.rules:
            if rule.matches(role):
                try:
                    spec = rule.apply(spec)
                except ValueError as e:
                    raise ValueError(f"quantization rule '{rule}' gives role {role!r} an invalid spec: {e}") from None
        return spec

    def table(self, roles: Iterable[str]) -> dict[str, QuantSpec]:
        """{role: spec}; raises if a rule matches none of `roles` (a typo, or a recipe for another
        model family, such as `bimamba` on a transformer)."""
        roles = tuple(roles)
        for rule in self.rules:
            if not any(rule.matches(r) for r in roles):
                raise ValueError(
                    f"quantization rule '{rule}' matches no layer of this model; its roles are {', '.join(roles)}"
                )
        return {r: self.spec(r) for r in roles}

    def __str__(self) -> str:
        return "; ".join(map(str, self.rules)) or "fp"


@dataclasses.dataclass(frozen=True)
class Method:
    """A named recipe; `stage1` is the method trained first, until `stage2_frac` of the steps."""

    rules: str
    stage1: str | None = None
    stage2_frac: float | None = None
    doc: str = ""


METHODS: dict[str, Method] = {
    "fp": Method("", doc="full precision"),
    "bitnet": Method(
        "*_proj: weight=binary_mean, act=absmax_v1_8, norm=layer",
        doc="BitNet (Wang et al. 2023, eq. 1–11): LayerNorm (no affine) → absmax 8-bit → sign(W − mean W)·mean|W|",
    ),
    "b158": Method(
        "*_proj: weight=ternary_absmean, act=absmax8",
        doc="BitNet b1.58 (Ma et al. 2024, eq. 1–3): ternary absmean weights, per-token int8 absmax",
    ),
    "a48": Method(
        "*_proj: weight=ternary_absmean, act=absmean4; o_proj: act=topk_absmax8, act.keep=0.5; down_proj: act=absmax8",
        stage1="b158",
        stage2_frac=0.95,
        doc="BitNet a4.8 (Wang, Ma, Wei 2024, arXiv 2411.04965 §2): INT4 absmean inputs to q/k/v/gate/up, "
        "top-50% + INT8 on o_proj's input, INT8 on down_proj's; trained W1.58A8 (b158) for the "
        "first 95% of steps",
    ),
    "bitnet_v2_a8": Method(
        "*_proj: weight=ternary_absmean, act=absmax8; o_proj|down_proj: act=hadamard_absmax8",
        doc="BitNet v2 (Wang, Ma, Wei 2025, arXiv 2504.18415 §2), 8-bit stage: ternary absmean weights, "
        "per-token INT8 absmax inputs, o_proj's and down_proj's through H-BitLinear (Hadamard, then INT8)",
    ),
    "bitnet_v2": Method(
        "*_proj: weight=ternary_absmean, act=absmean4; o_proj|down_proj: act=hadamard_absmean4",
        stage1="bitnet_v2_a8",
        stage2_frac=0.95,
        doc="BitNet v2 (arXiv 2504.18415 §2), W1.58A4: INT4 absmean inputs to every projection, o_proj's and "
        "down_proj's after the online Hadamard transform (H-BitLinear); trained as bitnet_v2_a8 first, then "
        "continued with 4-bit activations (the switch at 95% of the steps is a4.8's split, kept here)",
    ),
    "fbi": Method(
        "*_proj: weight=fbi",
        doc="FBI-LLM (Ma et al. 2024): α ⊙ sign(W) + β, learnable per input feature; FP activations",
    ),
    "bimamba": Method(
        "in_proj|out_proj: weight=fbi",
        doc="Bi-Mamba (Tang et al. 2024): FBI binarization of Mamba-2's in/out projections only",
    ),
    "onebit": Method(
        "*_proj: weight=onebit, grad=tanh",
        doc="OneBit (Xu et al. 2024): LayerNorm(x·(g ⊙ sign(W) ⊙ h)), SVID-initialised g, h, the reference's "
        "tanh-surrogate sign gradient; FP activations",
    ),
    "pb_llm": Method(
        "*_proj: weight=pb_llm",
        doc="PB-LLM (Shang et al. 2023): 10% salient weights frozen at 8 bit (mask chosen once), the rest "
        "α·sign(W) with one α per matrix; FP activations",
    ),
    **{
        f"rtn{k}": Method(f"*_proj: weight=rtn{k}", doc=f"{k}-bit round-to-nearest weights (GPTQ's grid)")
        for k in (2, 3, 4, 8)
    },
    **{
        f"paretoq{k}": Method(
            f"*_proj: weight=paretoq{k}",
            doc=f"ParetoQ (Liu et al. 2025, arXiv 2502.02631) at {'1.58' if k == '158' else k} bits: a learned step "
            "per output channel (SEQ at 1.58 and 2 bits, LSQ at 3 and 4, sign at 1) with the reference's "
            "gradients; FP activations; meant for QAT from a pretrained fp run (config.init_from)",
        )
        for k in ("1", "158", "2", "3", "4")
    },
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown quantization method {name!r}; choose one of {tuple(METHODS)}")
    return METHODS[name]


def recipe(method: str, rules: str = "", grad: str = "identity") -> Recipe:
    """The recipe of `method` with the extra `rules` (the command line's) applied after its own."""
    return Recipe(parse_rules(get_method(method).rules) + parse_rules(rules), grad)


def plan(
    method: str, stage1: str | None = None, stage2_frac: float | None = None, total_steps: int = 1
) -> list[tuple[int, str]]:
    """[(first step, method name)] of a run: [(0, method)], or [(0, stage1), (switch, method)].

    `stage1` None/'' = the method's own first stage (a48: b158), 'none' = no first stage;
    `stage2_frac` None = the method's. The switch step round(stage2_frac·total_steps) depends on the
    step alone, so it survives preemption and resume exactly. A stage with no steps is dropped.
    """
    m = get_method(method)
    stage1 = m.stage1 if stage1 in (None, "") else stage1
    if stage1 in (None, "none"):
        return [(0, method)]
    get_method(stage1)
    frac = m.stage2_frac if stage2_frac is None else stage2_frac
    if frac is None or not 0.0 <= frac <= 1.0:
        raise ValueError(f"stage2_frac={frac!r} must be in [0, 1] when a first stage ({stage1!r}) is set")
    switch = round(frac * total_steps)
    return [(0, method)] if switch == 0 else [(0, stage1), (switch, method)]
