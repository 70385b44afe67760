"""A model's repeated blocks: a Python loop of modules, or one stacked module run by ``jax.lax.scan``.

Every family keeps its n blocks under ``model.layers`` (Transformer's decoder layers, Mamba2LM's blocks)
and builds and runs them through this module, so ``config.model.scan_layers`` and
``config.model.remat_policy`` mean the same in each:

* loop layout: ``layers`` is an ``nnx.List`` of n modules (parameter paths ``layers.0.…``); the train
  step's HLO holds n copies of the block, so compile time grows with depth.
* stacked layout (``scan_layers``): one module whose every variable has a leading (n,) axis, logical
  name ``'layers'`` (replicated by the mesh rules, so each weight keeps its per-layer sharding), made by
  ``nnx.vmap`` and applied with ``jax.lax.scan``: one block in the HLO, compile time ~flat in depth
  (benchmarks/compile_time.py). Checkpoints hold the stacked arrays.

:func:`unstack_layers` gives a model in the loop layout (what HF/GGUF export, packing and PTQ read);
:func:`layers_like` converts a parameter tree between layouts (a checkpoint of the other layout).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn.bitdense import QUANTIZED_WEIGHT

LAYERS_AXIS = "layers"  # logical name of the stacked layer axis (mesh rule: replicated)

# config.model.remat_policy → the jax.checkpoint policy of each block. 'none': no remat, the backward
# keeps every intermediate; 'full': policy None, only the block's input is kept. 'save_quantized' keeps
# the quantized weights W̃ that BitDense names QUANTIZED_WEIGHT, so b1.58 does not quantize its weights
# again in the backward (for fp blocks it is 'full': nothing to save); 'save_dots' keeps every
# projection's output (dots without batch dims), yet the backward's dx = dy·W̃ᵀ still re-quantizes W.
# Measured in benchmarks/remat.py (benchmarks/RESULTS.md).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "save_quantized": jax.checkpoint_policies.save_only_these_names(QUANTIZED_WEIGHT),
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(cfg) -> str:
    """The effective remat policy name of config.model (the old `remat` bool read as its alias)."""
    if cfg.get("remat") is None or cfg.remat_policy != "none":
        return cfg.remat_policy
    return "full" if cfg.remat else "none"


def validate_fields(cfg, need: Callable[[bool, str, str], None]) -> None:
    """scan_layers / remat_policy / remat of config.model; need(ok, field, fix) reports a bad one."""
    need(isinstance(cfg.scan_layers, bool), "scan_layers", "must be True or False")
    need(cfg.remat_policy in REMAT_POLICIES, "remat_policy", f"choose one of {tuple(REMAT_POLICIES)}")
    need(
        cfg.remat is None or isinstance(cfg.remat, bool),
        "remat",
        "must be None (use config.model.remat_policy), True or False",
    )
    need(
        not (cfg.remat is False and cfg.remat_policy != "none"),
        "remat",
        f"False contradicts config.model.remat_policy={cfg.remat_policy!r}; remat is the old name of "
        f"remat_policy: set --config.model.remat=None and choose remat_policy ('none' = no remat)",
    )


def make_layers(make: Callable[[nnx.Rngs], nnx.Module], n: int, scan: bool, rngs: nnx.Rngs):
    """n blocks make(rngs): an nnx.List (loop layout), or with `scan` one module whose variables carry
    a leading (n,) axis named LAYERS_AXIS (each block initialised from its own split of rngs)."""
    if not scan:
        return nnx.List([make(rngs) for _ in range(n)])

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
    def stacked(rngs):
        return make(rngs)

    return stacked(rngs)


def apply_layers(layers, x, call: Callable, policy: str, caches=None):
    """x through the blocks in order → (x, caches).

    call(block, x, cache) → (x, cache) runs one block. caches None: training/scoring forward, each block
    rematerialised by `policy`; else the decode caches (a list per block, or one tree whose leaves have
    a leading (n,) axis for stacked layers) go through with their blocks and come back updated.
    """
    if isinstance(layers, nnx.List):
        if caches is not None:
            out = []
            for layer, cache in zip(layers, caches):
                x, cache = call(layer, x, cache)
                out.append(cache)
            return x, out
        fwd = lambda layer, x: call(layer, x, None)[0]
        if policy != "none":
            fwd = nnx.remat(fwd, policy=REMAT_POLICIES[policy])
        for layer in layers:
            x = fwd(layer, x)
        return x, []
    # A plain lax.scan over nnx.split state (not nnx.scan): the model may then be closed over by an
    # outer jax loop (the sampler's fori_loop) as the loop-layout one is.
    graphdef, state = nnx.split(layers)

    def body(x, xs):
        layer_state, cache = xs
        return call(nnx.merge(graphdef, layer_state), x, cache)

    if caches is None and policy != "none":
        # prevent_cse=False: the scan boundary already keeps XLA from folding the recomputation into the
        # forward (jax.checkpoint docs), and the barrier would cost speed.
        body = jax.checkpoint(body, policy=REMAT_POLICIES[policy], prevent_cse=False)
    return jax.lax.scan(body, x, (state, caches))


def unstack_layers(model):
    """`model` in the loop layout: a copy whose `layers` is an nnx.List of per-block modules holding
    slices of the stacked parameters (scan_layers off); `model` itself when it has no stacked layers.

    Everything that reads per-layer parameters (HF/GGUF export, packing, PTQ) goes through this.
    """
    if not getattr(model, "scan_layers", False):
        return model
    out = nnx.clone(model)
    layers = []
    for i in range(model.n_layers):
        layer = nnx.clone(model.layers)
        for _, var in nnx.iter_graph(layer):
            if isinstance(var, nnx.Variable):
                var.set_value(var.get_value()[i])
                names = var.get_metadata().get("out_sharding")
                if names:
                    if names[0] != LAYERS_AXIS:
                        raise ValueError(f"a stacked variable's leading axis is {names[0]!r}, not {LAYERS_AXIS!r}")
                    var.set_metadata(out_sharding=tuple(names[1:]))
        layers.append(layer)
    out.layers, out.scan_layers = nnx.List(layers), False
    return out


def layers_like(params: dict, like: dict) -> dict:
    """A pure parameter dict (nnx.to_pure_dict) in the layer layout of `like`: per-layer
    {'layers': {0: {…}, 1: {…}}} ↔ stacked {'layers': {…: [n_layers, …]}}; other entries as they are.

    For checkpoints written by a run of the other layout (e.g. an imported HF model, per-layer,
    fine-tuned with scan_layers). Arrays come back as jax arrays (stacking copies).
    """
    if "layers" not in params or "layers" not in like:
        return params
    per_layer = lambda tree: all(isinstance(k, int) for k in tree)
    src, dst = params["layers"], like["layers"]
    if per_layer(src) == per_layer(dst):
        return params
    if per_layer(src):
        layers = jax.tree.map(lambda *xs: jnp.stack(xs), *(src[i] for i in sorted(src)))
    else:
        n = len(jax.tree.leaves(src)[0])
        layers = {i: jax.tree.map(lambda x, i=i: x[i], src) for i in range(n)}
    return {**params, "layers": layers}
