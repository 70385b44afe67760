"""What every model family shares: dtypes, the ``quant`` config section and its stages, and the embedding.

A family module (bitjax.models.transformer, bitjax.models.mamba2) names its layer roles and builds its
layers; how config.model.quant becomes each role's QuantSpec (bitjax.quant.recipes), how a method's
stages split a run, and the (optionally quantized, optionally tied) embedding are the same for all.
"""

from __future__ import annotations

import copy
import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from bitjax import config as config_lib
from bitjax.nn.bitdense import default_kernel_init
from bitjax.nn.params import param, quant_state
from bitjax.quant import recipes, warmup
from bitjax.quant.registry import QuantSpec, check_rule

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def quant_config() -> ConfigDict:
    """config.model.quant of every family: method, grad, rules, stage1, stage2_frac, warmup_steps (see
    transformer.default_config)."""
    return ConfigDict(
        dict(method="fp", grad="identity", rules="", stage1="", stage2_frac=placeholder(float), warmup_steps=0)
    )


def is_pos_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0


def stage_configs(cfg, total_steps: int = 1) -> list[tuple[int, ConfigDict]]:
    """[(first step, model config)] of a run: the quantization stages of config.model.quant.

    One entry unless the method has a first stage (a48 trains b158 first): then the first
    stage's config runs `quant.stage1` (without `quant.rules`, which belong to the method) and the
    second the method itself. Each returned config has a single stage (stage1='none').
    """
    q = cfg.quant
    stages = recipes.plan(q.method, q.stage1, q.stage2_frac, total_steps)
    out = []
    for i, (start, method) in enumerate(stages):
        c = copy.deepcopy(cfg)
        c.quant.method, c.quant.stage1 = method, "none"
        c.quant.rules = q.rules if i == len(stages) - 1 else ""
        out.append((start, c))
    return out


def quant_table(cfg, roles) -> dict[str, QuantSpec]:
    """{role: QuantSpec} of config.model.quant's method (its final stage) over a family's layer `roles`."""
    q = cfg.quant
    return recipes.recipe(q.method, q.rules, q.grad).table(roles)


def validate_quant(cfg, name: str, table_fn, start_from: str, family: str = "") -> None:
    """Check config.model.quant of any family: fields, method, stages, rules; ValueError naming the field.

    table_fn: the family's cfg → {role: QuantSpec}; every stage's table must resolve (rules that match
    none of the family's roles, bad options, … are refused here, before anything compiles).
    """
    q = cfg.quant

    def need(ok, field, fix):
        if not ok:
            raise ValueError(f"{name}.quant.{field}={q.get(field)!r} is invalid: {fix}")

    config_lib.check_fields(q, quant_config(), f"{name}.quant", start_from, missing_ok=True)
    need(q.method in recipes.METHODS, "method", f"choose one of {tuple(recipes.METHODS)}")
    need(
        q.stage1 in ("", "none") or q.stage1 in recipes.METHODS,
        "stage1",
        f"choose '' (the method's), 'none' or one of {tuple(recipes.METHODS)}",
    )
    need(
        q.stage2_frac is None or (isinstance(q.stage2_frac, numbers.Real) and 0 <= q.stage2_frac <= 1),
        "stage2_frac",
        "must be in [0, 1] or None (= the method's)",
    )
    warm = q.get("warmup_steps", 0)
    need(
        isinstance(warm, numbers.Integral) and not isinstance(warm, bool) and warm >= 0,
        "warmup_steps",
        "must be an int ≥ 0 (0 = no quantization warm-up)",
    )
    need(
        not (warm and cfg.get("int8_matmul", False)),
        "warmup_steps",
        "a warm-up mixes float and quantized values, which the integer matmul cannot run: "
        "set config.model.int8_matmul=False or quant.warmup_steps=0",
    )
    for field, check in (("grad", check_rule), ("rules", recipes.parse_rules)):
        try:
            check(q[field])
        except ValueError as e:
            raise ValueError(f"{name}.quant.{field}={q[field]!r} is invalid: {e}") from None
    try:  # every stage's recipe resolves for every role (bad options, rules matching no role, …)
        for _, c in stage_configs(cfg):
            table_fn(c)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}.quant (method={q.method!r}, rules={q.rules!r}) is invalid{family}: {e}") from None


# ============================================================================ modules
class Embed(nnx.Module):
    """Token embedding, param `embedding` (vocab, d_model), logical axes ('vocab', 'embed').

    quant (the recipe's 'embed' role, when not fp): lookups read W̃ = quant.quantize_weight(E), E
    taken as a (vocab=in, embed=out) kernel. head_quant (the 'lm_head' role of a tied head):
    :meth:`attend` quantizes its input with head_quant's act quantizer and reads head_quant's W̃.
    Learned quantizer params (e.g. FBI α, β) live in `qparams`, shared by both uses.
    """

    def __init__(
        self,
        vocab: int,
        d_model: int,
        *,
        quant: QuantSpec | None = None,
        head_quant: QuantSpec | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        for role, s in (("embed", quant), ("lm_head", head_quant)):
            if s is not None and (s.norm != "none" or s.output_norm() is not None):
                raise ValueError(
                    f"the {role} role (a table lookup{' of a tied head' * (role == 'lm_head')}) "
                    f"has no input or output norm, got {s}: drop norm / out_norm / weight=onebit "
                    f"from the rules that match {role}"
                )
        self.quant, self.head_quant, self.dtype = quant, head_quant, dtype
        table = default_kernel_init(rngs.params(), (vocab, d_model), jnp.float32)  # HF: N(0, 0.02)
        self.embedding = param(table, ("vocab", "embed"))
        spec = quant or head_quant
        self.qparams = nnx.Dict(
            {
                k: param(v, ("vocab" if side == "in" else "embed",))
                for k, (v, side) in (spec.init_learned(table) if spec is not None else {}).items()
            }
        )
        self.qstate = nnx.Dict(
            {
                k: quant_state(v, ("vocab", "embed"))
                for k, v in (spec.init_state(table) if spec is not None else {}).items()
            }
        )

    def table(self, spec: QuantSpec | None) -> jax.Array:
        """E (spec None) or W̃ = spec.quantize_weight(E) (vocab, d_model), float32."""
        if spec is None:
            return self.embedding[...]
        e = self.embedding[...]
        if spec.weight == "none":
            return e
        q = spec.quantize_weight(
            e,
            **{k: v[...] for k, v in self.qparams.items()},
            **{k: jax.lax.stop_gradient(v[...]) for k, v in self.qstate.items()},
        )
        return warmup.mix(e, q)  # E + λ(W̃ − E) inside a quantization warm-up (bitjax.quant.warmup)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int[B, L] → [B, L, d_model] in `dtype`."""
        return jnp.take(self.table(self.quant), tokens, axis=0).astype(self.dtype)

    def quantized_head_input(self, x: jax.Array) -> jax.Array:
        """The tied head's input through head_quant's act quantizer (x + λ(x̃ − x) inside a warm-up)."""
        if self.head_quant is None or self.head_quant.act == "none":
            return x
        return warmup.mix(x, self.head_quant.quantize_act(x))

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output head: x [..., D] · tableᵀ → float32 logits [..., V]."""
        if self.head_quant is not None:
            x = self.quantized_head_input(x)
        return jnp.einsum(
            "...d,vd->...v", x, self.table(self.head_quant).astype(x.dtype), preferred_element_type=jnp.float32
        )
