"""Model registry: config.model.name → the family's model class, validator, size hints and stages.

The trainer uses :func:`get_model`, :func:`validate`, :func:`size_hints`, :func:`stage_configs` and
:func:`describe`; a model is any Flax NNX module ``Model(cfg, *, rngs)`` mapping int32 tokens [B, L]
to float32 logits [B, L, V].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bitjax.models import mamba2, transformer
from bitjax.models.transformer import SIZES, Transformer, hf_param_names, validate_config


@dataclasses.dataclass(frozen=True)
class Family:
    model: type
    validate: Callable[..., None]           # (cfg, seq_len) → None or ValueError naming the field
    size_hints: dict[str, str]              # logical axis → config field that sets its size
    stage_configs: Callable[..., list]      # (cfg, total_steps) → [(first step, single-stage cfg)]
    quant_table: Callable[[Any], dict]      # cfg → {layer role: QuantSpec}
    default_config: Callable[[], Any]       # () → the family's default config.model


_MODELS = {"transformer": Family(Transformer, transformer.validate_config, transformer.SIZE_HINTS,
                                 transformer.stage_configs, transformer.quant_table,
                                 transformer.default_config),
           "mamba2": Family(mamba2.Mamba2LM, mamba2.validate_config, mamba2.SIZE_HINTS, mamba2.stage_configs,
                            mamba2.quant_table, mamba2.default_config)}


def _entry(name: str) -> Family:
    if name not in _MODELS:
        raise ValueError(f"config.model.name={name!r} is invalid: choose one of {tuple(_MODELS)}")
    return _MODELS[name]


def get_model(name: str):
    """The model class registered as `name`."""
    return _entry(name).model


def validate(cfg, seq_len: int | None = None) -> None:
    """Validate config.model with its model's validator (ValueError naming the field)."""
    _entry(cfg.get("name")).validate(cfg, seq_len)


def size_hints(name: str) -> dict[str, str]:
    """Logical axis → the config field that sets its size (for mesh-divisibility errors)."""
    return dict(_entry(name).size_hints)


def default_config(name: str = "transformer"):
    """The default config.model of family `name`."""
    return _entry(name).default_config()


def stage_configs(cfg, total_steps: int) -> list[tuple[int, Any]]:
    """[(first step, model config)]: the model the trainer runs from each step on (one entry unless
    the quantization method trains in stages, e.g. a48 after b158). All stages share parameters."""
    return _entry(cfg.name).stage_configs(cfg, total_steps)


def describe(cfg) -> dict[str, str]:
    """{layer role: its quantization spec as text} (printed at start, stored with checkpoints)."""
    return {role: str(spec) for role, spec in _entry(cfg.name).quant_table(cfg).items()}


__all__ = ["SIZES", "Transformer", "default_config", "describe", "get_model", "hf_param_names",
           "size_hints", "stage_configs", "validate", "validate_config"]
