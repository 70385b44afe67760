"""Activation sharding constraints on logical axes (MaxText's `with_logical_constraint` habit).

Models annotate their parameters with logical axis names; left to XLA's sharding propagation, the
fsdp-sharded weights can pull activations onto the embed axis and leave the batch replicated, so per-chip
temporaries grow with the chip count at a fixed per-chip batch (issue 26: 1b fp, 2×2048 per chip on v5e,
26.07 GiB temp per chip at 16 chips without constraints, 3.33 GiB with them; benchmarks/RESULTS.md).

    with sharding.logical_rules(mesh, to_pspec):    # the trainer's / eval's jitted step body
        x = sharding.constrain(x, ("batch", "length", "embed"))

`to_pspec(names) → PartitionSpec` is the run's rules table (bitjax.run.mesh.logical_to_pspec with
config.axis_rules), handed in by the caller so this module knows no config. Outside `logical_rules`
(eager calls, sampling, export, tests on one device) `constrain` returns x untouched; a mesh axis whose
size does not divide the dim it would shard (a decode batch of 1) is dropped for that dim, never padded.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# (mesh, to_pspec) while a step is traced under logical_rules; None otherwise. A ContextVar, not a module
# global: it is set only for the extent of a `with` block (the trace), per thread.
_CONTEXT: contextvars.ContextVar[tuple[Mesh, Callable[[Sequence[str | None]], P]] | None] = contextvars.ContextVar(
    "bitjax_logical_rules", default=None
)


@contextlib.contextmanager
def logical_rules(mesh: Mesh, to_pspec: Callable[[Sequence[str | None]], P]):
    """Within the block, :func:`constrain` shards activations on `mesh` by `to_pspec` (a no-op on 1 device)."""
    token = _CONTEXT.set(None if mesh.size == 1 else (mesh, to_pspec))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """spec with, per dim, only the mesh axes (left to right) whose running product divides that dim."""
    out = []
    for d, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        for a in axes:
            if shape[d] % (math.prod(mesh.shape[b] for b in kept) * mesh.shape[a]) == 0:
                kept.append(a)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """x constrained to the sharding its logical dim names map to (one name or None per dim of x)."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} logical names {tuple(names)} for an array of shape {x.shape}")
    mesh, to_pspec = ctx
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _fit(to_pspec(names), x.shape, mesh)))
