"""Normalization layers (NNX). Statistics in float32, output in the input dtype (as HF Llama/BitNet)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn.params import param


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x²) + eps) · scale   (Zhang & Sennrich, 2019). scale: (d,), logical axis `axis`."""

    def __init__(
        self, num_features: int, *, eps: float = 1e-6, axis: str | None = "embed", rngs: nnx.Rngs | None = None
    ):
        del rngs
        self.eps = eps
        self.scale = param(jnp.ones((num_features,), jnp.float32), (axis,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """y = (x − mean) / sqrt(var + eps) · scale + bias  (Ba et al., 2016).

    affine=False drops scale and bias: BitNet v1's in-layer LayerNorm (Wang et al. 2023, eq. 10–11,
    "SubLN"), which only normalises — the block's pre-norm already carries a learned gain.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        axis: str | None = "embed",
        affine: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.eps = eps
        self.scale = param(jnp.ones((num_features,), jnp.float32), (axis,)) if affine else None
        self.bias = param(jnp.zeros((num_features,), jnp.float32), (axis,)) if affine else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def make_norm(
    kind: str | None, num_features: int, *, eps: float | None = None, axis: str | None = "embed", affine: bool = True
) -> nnx.Module | None:
    """'rms' | 'layer' | None/'none' → a norm module (or None). `affine` applies to 'layer'."""
    if kind in (None, "none"):
        return None
    if kind == "rms":
        return RMSNorm(num_features, eps=1e-6 if eps is None else eps, axis=axis)
    if kind == "layer":
        return LayerNorm(num_features, eps=1e-5 if eps is None else eps, axis=axis, affine=affine)
    raise ValueError(f"unknown norm {kind!r}; choose 'rms', 'layer' or 'none'")
