"""Block reconstruction: the harness of PTQ methods that learn per decoder block (OmniQuant, EfficientQAT).

Block i is trained on the calibration activations that come out of the already-quantized blocks < i,
against the full-precision chain kept alongside (OpenGVLab/OmniQuant ``quantize/omniquant.py``; the same
in OpenGVLab/EfficientQAT ``quantize/block_ap.py``):

    x_q⁰ = x_fp⁰ = embed(tokens)                                        [n, L, D]
    per block i:  y_fp = block_i(W; x_fp)                               (the regression target)
                  θ* = argmin_θ  mean‖block_i(W̃(θ); x_q) − y_fp‖²       (MSE; AdamW over mini-batches)
                  x_q ← block_i(W̃(θ*); x_q),  x_fp ← y_fp

With `aug_loss` (the reference's --aug_loss, in its W2 scripts) the loss adds mean‖block_i(W̃(θ); x_q) −
block_i(W; x_q)‖²: the FP block on the quantized chain's input as a second target.

The block runs as a pure function of its parameter dict (:func:`block_forward`), the loop layout's
(`bitjax.nn.layer_stack.unstack_layers` slices a scan_layers model into it). One block's θ and optimizer
state are alive at a time, beside the three [n, L, D] activation sets. A method is a :class:`BlockMethod`
(registered in bitjax.quant.ptq_methods with kind 'block'): how it initialises θ from the block's
parameters, how θ gives the block's parameters in the forward (fake-quantized, differentiable through
its STEs), and its optimizer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


@dataclasses.dataclass(frozen=True)
class BlockMethod:
    """What a block-reconstruction method supplies to :func:`reconstruct`.

    init(params, bits, group_size, layer) → θ: the trainable pytree of one block, from its FP parameters
        (a pure dict, as nnx.to_pure_dict gives: {'self_attn': {'q_proj': {'kernel': (in, out)}, …}, …});
        `layer` is the block's module, read only for its layout (heads, head_dim, sub-norms).
    apply(θ, params, bits, group_size) → params': the block's parameters in the forward (each projection
        kernel fake-quantized); differentiable in θ. Applied to the trained θ it gives the written W̃.
    optimizer(θ, total_steps, bits) → optax transformation over θ (per-leaf learning rates, schedule).
    default_epochs(bits) → epochs over the calibration set per block; default_batch_size: sequences a step.
    variants: (option name, the method with that option) pairs, e.g. OmniQuant's ('let', LWC + LET).
    """

    init: Callable
    apply: Callable
    optimizer: Callable
    default_epochs: Callable[[int], int]
    default_batch_size: int
    variants: tuple = ()


def kernels(params: dict):
    """(block, name, kernel (in, out)) of each projection of a decoder block's parameter dict, in order."""
    for block, names in PROJECTIONS.items():
        for name in names:
            yield block, name, params[block][name]["kernel"]


def with_kernels(params: dict, new: dict) -> dict:
    """`params` with each projection kernel replaced by new[block][name] (other entries shared)."""
    out = dict(params)
    for block, names in PROJECTIONS.items():
        out[block] = dict(params[block])
        for name in names:
            out[block][name] = {**params[block][name], "kernel": new[block][name]}
    return out


def block_forward(graphdef, params: dict, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """One decoder block as a pure function: x [B, L, D] → block(x) [B, L, D] with parameters `params`
    (a pure dict of the block's state; `graphdef` from nnx.split of a loop-layout block, hashable, so a
    jitted caller compiles once for all blocks of a model)."""
    return nnx.merge(graphdef, params)(x, cos, sin)[0]


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def block_loss(graphdef, method, bits, group_size, theta, params, x, ys, cos, sin) -> jax.Array:
    """Σ_y mean((block(apply(θ, params))(x) − y)²) over the targets ys (a tuple of [B, L, D]), each mean over
    all elements: OmniQuant's torch.nn.MSELoss between an FP target and the quantized block's output on x."""
    out = block_forward(graphdef, method.apply(theta, params, bits, group_size), x, cos, sin).astype(jnp.float32)
    return sum(jnp.mean(jnp.square(out - y.astype(jnp.float32))) for y in ys)


@partial(jax.jit, static_argnums=(0, 3, 4))
def apply_method(method, theta, params, bits, group_size) -> dict:
    """method.apply(θ, params, bits, group_size), jitted once per block structure: the block's W̃."""
    return method.apply(theta, params, bits, group_size)


def train_step(tx, graphdef, method, bits, group_size):
    """step(θ, opt_state, params, x, ys, cos, sin) → (θ, opt_state, loss): one optimizer step on one mini-batch
    (ys: the targets, see block_loss)."""

    def step(theta, opt_state, params, x, ys, cos, sin):
        loss, g = jax.value_and_grad(
            lambda t: block_loss(graphdef, method, bits, group_size, t, params, x, ys, cos, sin)
        )(theta)
        updates, opt_state = tx.update(g, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss

    return jax.jit(step)


_forward = jax.jit(block_forward, static_argnums=0)


def _forward_all(graphdef, params, x, cos, sin, batch: int) -> jax.Array:
    """block(params)(x) over all n sequences of x [n, L, D], `batch` at a time."""
    return jnp.concatenate([_forward(graphdef, params, x[i : i + batch], cos, sin) for i in range(0, len(x), batch)])


def reconstruct_block(
    layer,
    x_fp,
    x_q,
    cos,
    sin,
    method: BlockMethod,
    bits,
    group_size,
    epochs: int,
    batch: int,
    aug_loss: bool = False,
    steps: dict | None = None,
):
    """Trains one block (see the module docstring), writes its W̃ into `layer` (an nnx module) in place.

    x_fp, x_q [n, L, D]: the block's FP-chain and quantized-chain inputs. Returns (y_fp, y_q, init loss,
    final loss): the FP block's output on x_fp, the quantized block's on x_q, and the block loss over all
    n sequences at θ's initialisation and after training. steps: a dict kept across the blocks of one
    model, holding (optimizer, compiled step) per block structure, so the step compiles once, not per block.
    """
    n = len(x_q)
    steps_per_epoch = max(n // batch, 1)
    graphdef, state = nnx.split(layer)
    params = nnx.to_pure_dict(state)
    y_fp = _forward_all(graphdef, params, x_fp, cos, sin, batch)
    targets = (y_fp, _forward_all(graphdef, params, x_q, cos, sin, batch)) if aug_loss else (y_fp,)
    theta = method.init(params, bits, group_size, layer)
    steps = {} if steps is None else steps
    if graphdef not in steps:  # the same structure, optimizer and schedule for every block of a model
        tx = method.optimizer(theta, epochs * steps_per_epoch, bits)
        steps[graphdef] = (tx, train_step(tx, graphdef, method, bits, group_size))
    tx, step = steps[graphdef]
    opt_state = tx.init(theta)

    def total(theta):  # mini-batch means weighted by their size
        parts = [
            block_loss(
                graphdef,
                method,
                bits,
                group_size,
                theta,
                params,
                x_q[j : j + batch],
                tuple(y[j : j + batch] for y in targets),
                cos,
                sin,
            )
            * len(x_q[j : j + batch])
            for j in range(0, n, batch)
        ]
        return float(sum(parts) / n)

    init_loss = total(theta)
    for _ in range(epochs):  # in order, as the reference (no shuffling)
        for j in range(steps_per_epoch):
            sl = slice(j * batch, (j + 1) * batch)
            theta, opt_state, _loss = step(theta, opt_state, params, x_q[sl], tuple(y[sl] for y in targets), cos, sin)
    final_loss = total(theta)
    qparams = apply_method(method, theta, params, bits, group_size)
    y_q = _forward_all(graphdef, qparams, x_q, cos, sin, batch)
    nnx.replace_by_pure_dict(state, qparams)
    nnx.update(layer, state)
    return y_fp, y_q, init_loss, final_loss


def reconstruct(
    layers,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    method: BlockMethod,
    bits: int,
    group_size: int | None,
    epochs: int | None = None,
    batch_size: int | None = None,
    aug_loss: bool = False,
    log=print,
) -> dict[str, dict[str, float]]:
    """Quantizes every decoder block of `layers` (the loop layout's nnx.List) in place, in order, by block
    reconstruction.

    x [n, L, D]: the first block's input (the embedded calibration tokens); cos, sin: the RoPE tables
    [L, head_dim] the blocks take. `epochs` passes over the n sequences per block, in order (as the
    reference), `batch_size` sequences a step (defaults: the method's); aug_loss: see the module docstring. Returns {'layers.i': {'init':
    block loss at θ's initialisation, 'final': after training}}, each over all n sequences.
    """
    epochs = method.default_epochs(bits) if epochs is None else epochs
    batch = method.default_batch_size if batch_size is None else batch_size
    x_fp = x_q = x
    losses, steps = {}, {}
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        x_fp, x_q, init_loss, final_loss = reconstruct_block(
            layer, x_fp, x_q, cos, sin, method, bits, group_size, epochs, batch, aug_loss, steps
        )
        losses[f"layers.{i}"] = {"init": init_loss, "final": final_loss}
        log(
            f"layer {i}: {epochs} epochs × {max(len(x) // batch, 1)} steps in {time.perf_counter() - t0:.1f}s; "
            f"block loss {init_loss:.4g} → {final_loss:.4g}"
        )
    return losses
