"""One way to create a parameter: latent float32 value + logical axis names.

Logical names live in the Variable's ``out_sharding`` metadata; the trainer maps
them to mesh axes with the rules table in the config (bitjax.run.mesh).
``eager_sharding=False`` keeps module construction mesh-agnostic (Flax ≥0.12
would otherwise try to shard at creation and demand a mesh context).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {tuple(axes)} do not match a parameter of shape {value.shape}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class QuantState(nnx.Variable):
    """Frozen quantizer state computed once at init (PB-LLM's salient mask and 8-bit values).

    It lives beside the parameters (so it is checkpointed and sharded by the same logical axes) but
    receives no gradient: quantizers read it through stop_gradient, and the optimizer leaves it out
    of weight decay (bitjax.train.optim.WD_EXCLUDE has 'qstate'), so AdamW's update for it is
    exactly zero and it stays bit-for-bit what init computed. Stored as float32 (a bool mask would
    not pass jax.grad over the state).
    """


def quant_state(value: jax.Array, axes: Sequence[str | None]) -> QuantState:
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {tuple(axes)} do not match a state of shape {value.shape}")
    return QuantState(value.astype(jax.numpy.float32), out_sharding=tuple(axes), eager_sharding=False)
