"""Model registry: config.model.name → the family's :class:`Family` entry; everything family-specific
that code outside the family needs goes through it.

A model is any Flax NNX module ``Model(cfg, *, rngs)`` mapping int32 tokens [B, L] to float32 logits
[B, L, V], its parameters annotated with logical axis names (bitjax.run.mesh). The trainer uses
:func:`get_model`, :func:`validate`, :func:`size_hints`, :func:`stage_configs` and :func:`describe`;
config files use :func:`preset`; stored runs load through :func:`default_config`; HF/GGUF export
uses :func:`hf_param_names`; distillation takes any family as teacher or student.

Adding a family (e.g. ``mamba2``) is two files and one registry entry:

1. ``bitjax/models/mamba2.py``: the module ``Mamba2(cfg, *, rngs)``, and beside it
     * ``default_config()``: its ConfigDict (``name='mamba2'``, ``vocab_size`` (None → the tokenizer's,
       typed ``FieldReference(…, field_type=int)``), a ``quant`` section as the transformer's);
     * ``validate_config(cfg)``: ValueError naming the field; start with
       ``bitjax.config.check_fields(cfg, default_config(), "config.model", "bitjax.models.mamba2.default_config()")``;
     * ``SIZE_HINTS``: logical axis → the config field that sets its size (mesh-divisibility errors);
     * ``stage_configs(cfg, total_steps)`` and ``quant_table(cfg)``: the quantization stages and
       {layer role: QuantSpec} (bitjax.quant.recipes). ``common.stage_configs`` reads only
       ``cfg.quant`` (``common.quant_config()``) and serves any family with that section as is;
       ``quant_table`` is one line over the family's layer roles (``common.quant_table(cfg, ROLES)``);
       ``common`` also holds the (optionally quantized, optionally tied) ``Embed`` and ``validate_quant``;
     * optional ``SIZES`` (size name → overrides of default_config: what ``preset`` and config files use),
       ``hf_param_names(model)`` (its HF transformers state-dict names, for export), and
       ``init_cache`` / ``decode`` methods on the module (bitjax.eval.sample's fast generation).
2. One entry in ``_MODELS`` below: ``"mamba2": Family(mamba2.Mamba2, mamba2.validate_config,
   mamba2.SIZE_HINTS, common.stage_configs, mamba2.quant_table, mamba2.default_config, sizes=mamba2.SIZES)``.
3. ``configs/mamba2.py``: ``get_config(arg)`` = ``bitjax.run.config.trainer_config()`` with
   ``config.model = models.preset("mamba2", size)``; accept the arguments ``quant``, ``size`` and
   ``steps`` (``bitjax.config.parse_arg``) and ``python -m bitjax.compare --config configs/mamba2.py``
   and ``python benchmarks/step_time.py --config configs/mamba2.py`` work unchanged.

Nothing else changes: the trainer, checkpoints, eval, sampling, sweeps, distillation (either side)
and the mesh errors read the family from config.model.name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bitjax.models import common, mamba2, transformer
from bitjax.models.transformer import SIZES, Transformer, validate_config


@dataclasses.dataclass(frozen=True)
class Family:
    model: type
    validate: Callable[..., None]  # cfg → None or ValueError naming the field
    size_hints: dict[str, str]  # logical axis → config field that sets its size
    stage_configs: Callable[..., list]  # (cfg, total_steps) → [(first step, single-stage cfg)]
    quant_table: Callable[[Any], dict]  # cfg → {layer role: QuantSpec}
    default_config: Callable[[], Any]  # () → the family's default config.model
    sizes: dict[str, dict] = dataclasses.field(default_factory=dict)  # size → default_config overrides
    hf_param_names: Callable[[Any], dict] | None = None  # model → {param path: HF name}; None: no HF layout
    # modules a converted run may add to its source's parameters (config.init_from initialises them fresh)
    insertable: tuple[str, ...] = ()


_MODELS = {
    "transformer": Family(
        Transformer,
        transformer.validate_config,
        transformer.SIZE_HINTS,
        common.stage_configs,
        transformer.quant_table,
        transformer.default_config,
        sizes=transformer.SIZES,
        hf_param_names=transformer.hf_param_names,
        insertable=transformer.INSERTABLE,
    ),
    "mamba2": Family(
        mamba2.Mamba2LM,
        mamba2.validate_config,
        mamba2.SIZE_HINTS,
        common.stage_configs,
        mamba2.quant_table,
        mamba2.default_config,
        sizes=mamba2.SIZES,
        hf_param_names=mamba2.hf_param_names,
    ),
}


def _entry(name: str) -> Family:
    if name not in _MODELS:
        raise ValueError(f"config.model.name={name!r} is invalid: choose one of {tuple(_MODELS)}")
    return _MODELS[name]


def get_model(name: str):
    """The model class registered as `name`."""
    return _entry(name).model


def validate(cfg) -> None:
    """Validate config.model with its model's validator (ValueError naming the field)."""
    _entry(cfg.get("name")).validate(cfg)


def size_hints(name: str) -> dict[str, str]:
    """Logical axis → the config field that sets its size (for mesh-divisibility errors)."""
    return dict(_entry(name).size_hints)


def default_config(name: str = "transformer"):
    """The default config.model of family `name`."""
    return _entry(name).default_config()


def preset(name: str, size: str):
    """config.model of family `name` at size `size`: its default_config with the size's overrides."""
    fam = _entry(name)
    if size not in fam.sizes:
        raise ValueError(f"unknown size {size!r} of model family {name!r}; choose one of {sorted(fam.sizes)}")
    cfg = fam.default_config()
    cfg.update(fam.sizes[size])
    return cfg


def stage_configs(cfg, total_steps: int) -> list[tuple[int, Any]]:
    """[(first step, model config)]: the model the trainer runs from each step on (one entry unless
    the quantization method trains in stages, e.g. a48 after b158). All stages share parameters."""
    return _entry(cfg.name).stage_configs(cfg, total_steps)


def describe(cfg) -> dict[str, str]:
    """{layer role: its quantization spec as text} (printed at start, stored with checkpoints)."""
    return {role: str(spec) for role, spec in _entry(cfg.name).quant_table(cfg).items()}


def quant_table(cfg) -> dict:
    """{layer role: QuantSpec} of config.model's method (its final stage)."""
    return _entry(cfg.name).quant_table(cfg)


def insertable(name: str) -> tuple[str, ...]:
    """Module names whose parameters a run of family `name` may have beyond its config.init_from source's
    (the transformer's BitNet sub-norms, added when an fp Llama is converted to b1.58, as BitDistill's SubLN)."""
    return _entry(name).insertable


def require_hf(name: str) -> None:
    """ValueError unless family `name` has an HF transformers layout (export to HF / GGUF)."""
    if _entry(name).hf_param_names is None:
        have = tuple(n for n, f in _MODELS.items() if f.hf_param_names is not None)
        raise ValueError(
            f"config.model.name={name!r} has no HF transformers layout (its Family registers no "
            f"hf_param_names): HF and GGUF export cover {have}"
        )


def hf_param_names(model) -> dict[str, str]:
    """{our parameter path: HF transformers state-dict name} of `model`, by its family."""
    for name, fam in _MODELS.items():
        if isinstance(model, fam.model):
            require_hf(name)
            return fam.hf_param_names(model)
    raise ValueError(f"{type(model).__name__} is no registered model family ({tuple(_MODELS)})")


__all__ = [
    "SIZES",
    "Family",
    "Transformer",
    "default_config",
    "describe",
    "get_model",
    "hf_param_names",
    "insertable",
    "preset",
    "quant_table",
    "require_hf",
    "size_hints",
    "stage_configs",
    "validate",
    "validate_config",
]
