"""Model registry: config.model.name → model class, its config validator and size hints.

The trainer uses :func:`get_model`, :func:`validate` and :func:`size_hints`; a model
is any Flax NNX module ``Model(cfg, *, rngs)`` mapping int32 tokens [B, L] to
float32 logits [B, L, V].
"""

from __future__ import annotations

from bitjax.models import transformer
from bitjax.models.transformer import SIZES, Transformer, default_config, hf_param_names, validate_config

_MODELS = {"transformer": (Transformer, transformer.validate_config, transformer.SIZE_HINTS)}


def _entry(name: str):
    if name not in _MODELS:
        raise ValueError(f"config.model.name={name!r} is invalid: choose one of {tuple(_MODELS)}")
    return _MODELS[name]


def get_model(name: str):
    """The model class registered as `name`."""
    return _entry(name)[0]


def validate(cfg, seq_len: int | None = None) -> None:
    """Validate config.model with its model's validator (ValueError naming the field)."""
    _entry(cfg.get("name"))[1](cfg, seq_len)


def size_hints(name: str) -> dict[str, str]:
    """Logical axis → the config field that sets its size (for mesh-divisibility errors)."""
    return dict(_entry(name)[2])


__all__ = ["SIZES", "Transformer", "default_config", "get_model", "hf_param_names", "size_hints",
           "validate", "validate_config"]
