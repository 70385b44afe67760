"""Activation sharding constraints (MaxText's `with_logical_constraint` habit), a no-op without a mesh.

Models annotate only their parameters; left to XLA's propagation, the fsdp-sharded weights can pull the
activations onto the embed axis and leave the batch replicated, so per-chip temporaries grow with the
chip count at a fixed per-chip batch (issue 26: 1b fp, 2×2048 per chip, v5e: 10.5 GiB at 4 chips, 26.1
GiB at 16; with the constraint 3.3 GiB at 16, benchmarks/RESULTS.md). Active only under a context mesh
(`jax.set_mesh`), as bitjax.aot and the trainer's steps run; eager / unsharded calls are untouched.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # bitjax.run.mesh.DEFAULT_RULES' "batch"


def batch_sharded(x: jax.Array, axes: tuple[str, ...] = BATCH_AXES) -> jax.Array:
    """x [B, ...] constrained to be sharded over the context mesh's `axes` on dim 0, replicated elsewhere."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    names = tuple(a for a in axes if a in mesh.axis_names)
    return jax.lax.with_sharding_constraint(x, P(names or None, *([None] * (x.ndim - 1))))
