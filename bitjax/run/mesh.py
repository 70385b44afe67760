"""Device mesh, logical-axis rules and shardings for the trainer.

Models never see a mesh. They annotate each parameter with LOGICAL axis names
in the ``out_sharding`` metadata of its ``nnx.Param``::

    nnx.Param(init(key, (d, f)), out_sharding=('embed', 'mlp'), eager_sharding=False)

``eager_sharding=False`` (or building the model under
``with nnx.use_eager_sharding(False):``) keeps creation mesh-agnostic: flax 0.12
defaults to ``flax_always_shard_variable=True``, which makes the Variable
constructor call ``flax.core.spmd.shard_value`` and so demands a mesh (and would
read 'embed' as a mesh axis). With it off, ``out_sharding`` is plain metadata
that :func:`param_shardings` turns into ``NamedSharding`` s here.

Logical names: batch, length, embed, mlp, heads, kv_heads, head_dim, vocab,
state, ssm_in, ssm_conv, layers. Mesh axes: data, fsdp, tensor. The mapping between them is a tuple of
``(logical_name, mesh_axes)`` rules (MaxText style), see :data:`DEFAULT_RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitjax import config as config_lib

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("state", None),
    ("ssm_in", "tensor"),  # Mamba-2 in_proj outputs (z | x | B | C | dt)
    ("ssm_conv", "tensor"),  # Mamba-2 conv1d channels (x | B | C)
    ("layers", None),  # the stacked layer axis of a scan_layers model: every device holds all layers
)


# ----------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None, *, name: str = "config.mesh") -> Mesh:
    """Builds the ``('data', 'fsdp', 'tensor')`` mesh from ``{data, fsdp, tensor}``.

    At most one size may be -1, meaning "all remaining devices":
    ``size(-1) = n_devices // prod(other sizes)``. The product of the sizes must
    equal the number of devices (``jax.devices()`` unless ``devices`` is given).

    All three axes are ``AxisType.Auto``. jax's ``make_mesh`` now defaults to
    ``Explicit`` axes, where every op must resolve its output sharding at trace
    time: a matmul contracting an fsdp-sharded dim, for example, is rejected
    unless the model passes an ``out_sharding`` per op. Our models only annotate
    parameters (logical names) and a few activations
    (``jax.lax.with_sharding_constraint``); with ``Auto`` axes XLA's sharding
    propagation (GSPMD/Shardy) fills in the rest and inserts the collectives,
    which keeps model code free of mesh logic.

    Raises ``ValueError`` naming the field (e.g. ``config.mesh.fsdp``), the bad
    value, the device count, and how to fix it.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    cfg = mesh_cfg.to_dict() if hasattr(mesh_cfg, "to_dict") else dict(mesh_cfg)

    config_lib.check_fields(
        cfg, dict.fromkeys(MESH_AXES), name, "{data, fsdp, tensor} (sizes; one may be -1 = the rest of the devices)"
    )
    for a in MESH_AXES:
        v = cfg[a]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
            raise ValueError(
                f"{name}.{a} = {v!r} is invalid: each mesh size must be a positive int, "
                f'or -1 for "the rest of the {n} devices".'
            )
    wild = [a for a in MESH_AXES if cfg[a] == -1]
    if len(wild) > 1:
        raise ValueError(
            f"{', '.join(f'{name}.{a}' for a in wild)} are all -1; at most one mesh size may be -1 "
            f"(it takes the rest of the {n} devices). Set the others to explicit sizes."
        )
    known = math.prod(int(cfg[a]) for a in MESH_AXES if cfg[a] != -1)
    if wild:
        a = wild[0]
        if n % known:
            others = " × ".join(f"{b}={cfg[b]}" for b in MESH_AXES if b != a)
            raise ValueError(
                f"{name}.{a} = -1 cannot take the rest of the {n} devices: the other sizes "
                f"({others} = {known}) do not divide {n}. Choose sizes whose product divides {n}."
            )
        cfg[a] = n // known
    shape = tuple(int(cfg[a]) for a in MESH_AXES)
    if math.prod(shape) != n:
        expr = " × ".join(f"{name}.{a}={cfg[a]}" for a in MESH_AXES)
        raise ValueError(
            f"{expr} = {math.prod(shape)} devices, but {n} devices are available. Make the "
            f"product exactly {n}, or set one of the fields to -1 to take the rest."
        )
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


# ----------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------


def _norm_axes(axes, where: str) -> MeshAxes:
    if axes is None or isinstance(axes, str):
        return axes
    if isinstance(axes, Sequence) and all(isinstance(a, str) for a in axes):
        axes = tuple(axes)
        if not axes:
            return None
        return axes[0] if len(axes) == 1 else axes
    raise ValueError(f"{where}: mesh axes must be None, a mesh axis name or a list of them, got {axes!r}.")


def rules_from_config(value, *, name: str = "config.axis_rules") -> Rules:
    """Turns a config value into a rules tuple.

    ``value`` is a list of ``[logical_name, mesh_axes]`` pairs (what a ConfigDict
    holds, e.g. ``[['batch', ['data', 'fsdp']], ['length', None], ...]``) or a
    ``{logical_name: mesh_axes}`` mapping. ``mesh_axes`` is None, one mesh axis
    name, or a list of them. Several pairs may share a logical name; see
    :func:`logical_to_pspec` for how they are tried.
    """
    items = value.items() if isinstance(value, Mapping) else value
    rules = []
    for i, item in enumerate(items):
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"{name}[{i}] = {item!r}: expected a [logical_name, mesh_axes] pair.")
        rules.append((item[0], _norm_axes(item[1], f"{name}[{i}] ({item[0]!r})")))
    return tuple(rules)


def rules_to_config(rules: Rules = DEFAULT_RULES) -> list:
    """The inverse of :func:`rules_from_config`: a list of ``[name, axes]`` lists."""
    return [[k, list(v) if isinstance(v, tuple) else v] for k, v in rules]


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_pspec(names: Sequence[str | None] | None, rules: Rules) -> P:
    """Maps logical axis names to a ``PartitionSpec`` through ``rules``.

    ``None`` names (or ``names=None``) are replicated. For each name, dims left to
    right, the first rule for that name whose mesh axes are all still unused in
    this spec is taken. If every rule for the name uses an axis already taken by
    an earlier dim, the first rule's still-free axes are used (MaxText/flax
    behaviour: a mesh axis may shard only one dim, the later use is dropped).
    E.g. with the defaults, activations ``('batch', 'length', 'embed')`` →
    ``P(('data', 'fsdp'), None, None)``: 'embed' loses fsdp to 'batch'.

    Raises ``ValueError`` for a logical name no rule mentions.
    """
    if names is None:
        return P()
    table: dict[str, list[tuple[str, ...]]] = {}
    for k, v in rules:
        table.setdefault(k, []).append(_as_tuple(v))
    used: set[str] = set()
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(
                f"Unknown logical axis name {name!r} in {tuple(names)}: no rule in config.axis_rules "
                f"maps it. Known names: {sorted(table)}. Add a [{name!r}, mesh_axes] rule or fix the "
                f"out_sharding annotation."
            )
        cands = table[name]
        axes = next((c for c in cands if not used & set(c)), None)
        if axes is None:
            axes = tuple(a for a in cands[0] if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def _check_rules_fit_mesh(rules: Rules, mesh: Mesh) -> None:
    for k, v in rules:
        bad = [a for a in _as_tuple(v) if a not in mesh.shape]
        if bad:
            raise ValueError(
                f"Rule {k!r} → {v!r} in config.axis_rules names mesh axes {bad} that the mesh does "
                f"not have (mesh axes: {tuple(mesh.axis_names)})."
            )


# ----------------------------------------------------------------------------
# Parameter / optimizer-state shardings
# ----------------------------------------------------------------------------


def path_str(path) -> str:
    """``('layers', 0, 'mlp', 'kernel')``-style key path → ``'layers.0.mlp.kernel'``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _logical_names(var: nnx.Variable):
    names = var.get_metadata().get("out_sharding")
    if isinstance(names, NamedSharding):
        names = names.spec
    return None if names is None else tuple(names)


def _shape(x):
    x = x.get_value() if _is_var(x) else x
    return getattr(x, "shape", None)


def _spec_for(path, x, rules: Rules) -> P:
    """PartitionSpec of one leaf (Variable or plain array), with path-aware errors."""
    if not _is_var(x):
        return P()
    names = _logical_names(x)
    if names is None:
        return P()
    shape = _shape(x)
    if shape is not None and len(names) != len(shape):
        raise ValueError(
            f"{path_str(path)}: out_sharding {names} has {len(names)} names but the value has "
            f"shape {tuple(shape)} ({len(shape)} dims); give one logical name (or None) per dim."
        )
    try:
        return logical_to_pspec(names, rules)
    except ValueError as e:
        raise ValueError(f"{path_str(path)}: {e}") from None


def param_shardings(tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for every leaf of ``tree`` (same structure).

    ``tree`` is an ``nnx.State`` (concrete, or abstract from ``nnx.eval_shape``),
    an ``nnx.Optimizer``'s state, or any pytree. Each ``nnx.Variable`` is
    replaced by ``var.replace(NamedSharding)`` built from its ``out_sharding``
    logical names; Variables without that metadata and plain array leaves are
    replicated (``P()``). The result is usable as ``jax.jit(out_shardings=...)``
    and, leaf-by-leaf, with ``jax.tree.map(f, abstract, shardings)``.

    Optimizer state: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` copies each
    Param's metadata (``out_sharding`` included) onto the ``OptVariable`` s of
    ``mu``/``nu`` etc., so moments get the parameter's sharding; scalar state
    (counts) is an ``OptArray`` without metadata → replicated.
    """
    _check_rules_fit_mesh(rules, mesh)

    def one(path, x):
        s = NamedSharding(mesh, _spec_for(path, x, rules))
        return x.replace(s) if _is_var(x) else s

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


def check_divisible(
    abstract_state, mesh: Mesh, rules: Rules = DEFAULT_RULES, hints: Mapping[str, str] | None = None
) -> None:
    """Raises ``ValueError`` (before any compile) for dims their mesh axes don't divide.

    For each Variable with ``out_sharding``, dim ``d`` mapped to mesh axes
    ``(a1, a2, ...)`` needs ``shape[d] % (size(a1) * size(a2) * ...) == 0``. All
    offending params are listed, e.g.::

        model.layers.0.mlp.up_proj.kernel shape (64, 172): dim 1 ('mlp' → tensor=2)
        is not divisible by 2; change config.model.mlp_dim or config.mesh.tensor

    ``hints`` maps a logical name to the config field that sets its size
    (e.g. ``{'mlp': 'config.model.mlp_dim'}``); without one the message says
    "the model size behind 'mlp'".
    """
    _check_rules_fit_mesh(rules, mesh)
    hints = dict(hints or {})
    problems = []
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=_is_var)[0]
    for path, x in leaves:
        shape = _shape(x)
        if not _is_var(x) or shape is None or _logical_names(x) is None:
            continue
        spec = _spec_for(path, x, rules)
        names = _logical_names(x)
        for d, axes in enumerate(spec):
            axes = _as_tuple(axes)
            k = math.prod(mesh.shape[a] for a in axes)
            if k > 1 and shape[d] % k:
                sizes = "×".join(f"{a}={mesh.shape[a]}" for a in axes)
                field = hints.get(names[d], f"the model size behind {names[d]!r}")
                mesh_fields = " / ".join(f"config.mesh.{a}" for a in axes)
                problems.append(
                    f"{path_str(path)} shape {tuple(shape)}: dim {d} ({names[d]!r} → {sizes}) is not "
                    f"divisible by {k}; change {field} or {mesh_fields}"
                )
    if problems:
        raise ValueError(f"Parameters cannot be sharded evenly on mesh {dict(mesh.shape)}:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------

BATCH_NAMES = ("batch", "length")


def _batch_spec(ndim: int, rules: Rules) -> P:
    if ndim < 1:
        raise ValueError("batch leaves must have a leading batch dim, got a scalar.")
    names = BATCH_NAMES[:ndim] + (None,) * max(0, ndim - len(BATCH_NAMES))
    return logical_to_pspec(names, rules)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, length]`` input (``ndim`` dims; extra dims replicated)."""
    _check_rules_fit_mesh(rules, mesh)
    return NamedSharding(mesh, _batch_spec(ndim, rules))


def _local_batch_shards(mesh: Mesh, axes: tuple[str, ...]) -> int:
    """How many distinct slices of the batch dim this process's devices hold."""
    me = jax.process_index()
    idx = [mesh.axis_names.index(a) for a in axes]
    coords = {tuple(c[i] for i in idx) for c in np.ndindex(mesh.devices.shape) if mesh.devices[c].process_index == me}
    return len(coords)


def shard_batch(np_batch_local, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Assembles this process's host batch into global ``jax.Array`` s.

    ``np_batch_local`` is an array or pytree of arrays ``[local_batch, length, ...]``
    holding this process's rows. Each leaf becomes a global array of shape
    ``[local_batch * n_batch_processes, length, ...]`` sharded by
    :func:`batch_sharding` (via ``jax.make_array_from_process_local_data``, so
    the same code runs single- and multi-process).
    """
    _check_rules_fit_mesh(rules, mesh)

    def put(x):
        x = np.asarray(x)
        spec = _batch_spec(x.ndim, rules)
        k = _local_batch_shards(mesh, _as_tuple(spec[0]))
        if x.shape[0] % k:
            raise ValueError(
                f"Local batch of {x.shape[0]} rows (array shape {x.shape}) cannot be split over the "
                f"{k} batch shards on this process (rule batch → {spec[0]!r}, mesh {dict(mesh.shape)}); "
                f"make the per-process batch size a multiple of {k}."
            )
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

    return jax.tree.map(put, np_batch_local)
