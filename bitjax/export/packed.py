"""Packed inference: b1.58 projections that hold 2-bit codes in device memory and unpack inside the matmul.

    packed = pack_model(model)          # a copy of a b158 model whose projections are PackedDense
    generate(packed, prompt, 64, temperature=0)   # bitjax.eval.sample, unchanged

Any family: the projections are the BitDense layers inside ``model.layers`` (a transformer's 7 per layer,
a Mamba-2 block's in_proj and out_proj); embeddings and lm_head stay as they are.

PackedDense stores the kernel (in, out) as uint8 P (⌈in/4⌉, out) in HF's layout along the input axis
(input rows cut into 4 contiguous slabs, slab k in bits 2k, 2k+1; bitjax.export.pack) and the float32
multiplier s = 1/γ of b1.58 (ternary_absmean multiplies by s and divides by it). The forward is

    y = Q_x(x) · (unpack(P) / s)          unpack(P)[k·R + r, o] = ((P[r, o] >> 2k) & 3) − 1

in plain XLA: the shifts, masks and the division are elementwise ops XLA fuses into the weight
operand of the dot, so the same ops as BitDense's W̃ = codes/s run and the logits are equal to the
training model's. Weight memory is 1/8 of bf16 (plus 4 bytes per matrix). There is no Pallas kernel
here: XLA materializes the unpacked operand per call, so decode speed is not the point on CPU.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax.export.pack import pack_ternary_2bit
from bitjax.nn.bitdense import BitDense
from bitjax.nn.layer_stack import unstack_layers
from bitjax.quant.registry import QuantSpec
from bitjax.quant.weights import absmean_inv


class Packed(nnx.Variable):
    """Packed codes and scales: inference state, not trained."""


def unpack_2bit(packed: jax.Array, rows: int) -> jax.Array:
    """uint8 (R, out) → int8 (rows, out): the inverse of pack_ternary_2bit along axis 0, in jnp."""
    slabs = [(packed >> jnp.uint8(2 * k)) & jnp.uint8(3) for k in range(4)]
    return jnp.concatenate(slabs, axis=0)[:rows].astype(jnp.int8) - 1


class PackedDense(nnx.Module):
    """A b1.58 BitDense's inference twin: packed uint8 codes + 1/γ, activations quantized as before."""

    def __init__(self, layer: BitDense):
        spec = layer.quant
        if (
            spec.weight != "ternary_absmean"
            or layer.norm is not None
            or layer.bias is not None
            or dict(spec.weight_options or {})
        ):
            raise ValueError(f"PackedDense packs per-tensor ternary_absmean layers without norm/bias; got {spec}")
        kernel = jnp.asarray(layer.kernel[...], jnp.float32)
        inv = absmean_inv(kernel, (-2, -1)).reshape(())  # as ternary_absmean: W̃ = round(W·s)/s
        codes = np.asarray(jnp.clip(jnp.round(kernel * inv), -1, 1), np.int8)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.act = QuantSpec(act=spec.act, act_options=spec.act_options)
        self.dtype = layer.dtype
        self.packed = Packed(jnp.asarray(pack_ternary_2bit(codes)))
        self.inv_scale = Packed(jnp.asarray(inv, jnp.float32))

    def weight(self) -> jax.Array:
        """W̃ (in, out) float32 = codes / s, the value BitDense.quantized_kernel() computes."""
        return unpack_2bit(self.packed[...], self.in_features).astype(jnp.float32) / self.inv_scale[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = self.act.quantize_act(x.astype(dtype))
        return jnp.einsum("...i,io->...o", x, self.weight().astype(dtype), preferred_element_type=jnp.float32).astype(
            dtype
        )


def _slots(module: nnx.Module):
    """(owner, attribute) of every projection inside `module`, in attribute order; a projection is not entered."""
    for name, child in list(vars(module).items()):
        if isinstance(child, (BitDense, PackedDense)):
            yield module, name
        elif isinstance(child, nnx.Module):
            yield from _slots(child)


def projections(model) -> list[nnx.Module]:
    """The projections (BitDense or PackedDense) of every layer of `model`, in the loop layout."""
    return [getattr(owner, name) for layer in unstack_layers(model).layers for owner, name in _slots(layer)]


def map_projections(model, fn):
    """A deep copy of `model`, in the loop layout, with every projection p of its layers replaced by fn(p)."""
    out = copy.deepcopy(unstack_layers(model))  # nnx modules are Python objects: the given model stays as it is
    for layer in out.layers:
        for owner, name in list(_slots(layer)):
            setattr(owner, name, fn(getattr(owner, name)))
    return out


def pack_model(model):
    """A deep copy of a b1.58 model with every projection replaced by a PackedDense."""
    return map_projections(model, PackedDense)


def projection_bytes(model) -> int:
    """Bytes the projections' weights occupy in device memory (packed codes + scales, or latent kernels)."""
    return sum(
        x.nbytes
        for m in projections(model)
        for x in jax.tree.leaves(nnx.state(m, nnx.Param if isinstance(m, BitDense) else Packed))
    )
