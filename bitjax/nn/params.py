"""One way to create a parameter: latent float32 value + logical axis names.

Logical names live in the Variable's ``out_sharding`` metadata; the trainer maps
them to mesh axes with the rules table in the config (bitjax.train.mesh).
``eager_sharding=False`` keeps module construction mesh-agnostic (Flax ≥0.12
would otherwise try to shard at creation and demand a mesh context).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {tuple(axes)} do not match a parameter of shape {value.shape}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)
