"""BitDense: BitLinear as a Flax NNX layer, and Dense, its full-precision twin.

    y = Q_w(W) · Q_x(norm(x)) (+ b)

norm → activation quantizer → matmul against the quantized weight. The
quantizers return dequantized values (x̃ = codes/s, W̃ = codes·γ), so the
rescale of BitNet eq. 8 / b1.58 is already inside the product and the layer
agrees value for value with HF transformers' ``AutoBitLinear`` (online quant).
The kernel is quantized once per call (once per step in training) and XLA
fuses the elementwise quantizer ops around the matmul. With ``int8_matmul`` the
forward product runs on the integer codes instead (int8 × int8 → int32, one
rescale; :mod:`bitjax.quant.int8_matmul`), the backward unchanged.

Latent parameters are float32 (`param_dtype`); the matmul runs in `dtype`
(e.g. bfloat16 on accelerators) with float32 accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bitjax.nn.norms import make_norm
from bitjax.nn.params import param, quant_state
from bitjax.quant import warmup
from bitjax.quant.int8_matmul import int8_matmul, integer_forms
from bitjax.quant.registry import QuantSpec
from bitjax.quant.weights import sign

default_kernel_init = nnx.initializers.normal(stddev=0.02)
# checkpoint_name of W̃ in the compute dtype: remat_policy='save_quantized' keeps it for the backward
QUANTIZED_WEIGHT = "quantized_weight"


def _learned_axes(side: str, axes: tuple) -> tuple:
    """Logical axes of a learned quantizer parameter: a vector along the kernel's 'in' or 'out' axis, or
    'group': a (G, out) matrix (per group of input rows; the groups are not sharded)."""
    return {"in": (axes[0],), "out": (axes[1],), "group": (None, axes[1])}[side]


class BitDense(nnx.Module):
    """A linear layer with quantized weights and activations.

    Args:
      in_features, out_features: kernel shape (in, out) (HF weight = kernelᵀ).
      quant: a :class:`QuantSpec` (weight / act quantizer names, gradient rule, and the in-layer
        norm on the input: 'rms' = HF AutoBitLinear's `use_rms_norm`, 'layer' = BitNet v1's
        BitLinear LayerNorm without affine parameters; out_norm='layer', implied by weight='onebit',
        adds OneBit's affine-free LayerNorm on the output).
      norm_eps: eps of that norm (None → 1e-6 for 'rms', 1e-5 for 'layer').
      use_bias: add a bias (BitNet uses none).
      dtype: compute dtype of the matmul (None → the input's dtype).
      param_dtype: latent parameter dtype (float32).
      axes: logical axis names of the kernel, e.g. ('embed', 'mlp').
      int8_matmul: run the forward matmul on the int8 codes with int32 accumulation and one rescale
        (bitjax.quant.int8_matmul; the backward stays the fake-quant path's). Needs integer-coded
        quantizers (b158; a4.8), else ValueError.
    Input (…, in) → output (…, out).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        quant: QuantSpec = QuantSpec(),
        norm_eps: float | None = None,
        use_bias: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        axes=("embed", "mlp"),
        kernel_init=default_kernel_init,
        int8_matmul: bool = False,
        rngs: nnx.Rngs,
    ):
        if not isinstance(quant, QuantSpec):
            raise TypeError(f"quant must be a QuantSpec, got {type(quant).__name__}")
        if int8_matmul:
            integer_forms(quant)  # ValueError unless both quantizers are integer-coded
        self.int8_matmul = bool(int8_matmul)
        self.in_features, self.out_features = in_features, out_features
        self.quant, self.dtype, self.axes = quant, dtype, tuple(axes)
        kernel = kernel_init(rngs.params(), (in_features, out_features), param_dtype)
        self.kernel = param(kernel, self.axes)
        # Learned quantizer scales (FBI α/β, OneBit g/h, E2E-QP's step change), initialised from the kernel.
        self.qparams = nnx.Dict(
            {
                name: param(value.astype(param_dtype), _learned_axes(side, self.axes))
                for name, (value, side) in quant.init_learned(kernel).items()
            }
        )
        # Frozen quantizer state (PB-LLM's salient mask and values), chosen once from the initial kernel.
        self.qstate = nnx.Dict(
            {name: quant_state(value, self.axes) for name, value in quant.init_state(kernel).items()}
        )
        self.norm = make_norm(quant.norm, in_features, eps=norm_eps, axis=self.axes[0], affine=False)
        self.output_norm = quant.output_norm()
        self.bias = param(jnp.zeros((out_features,), param_dtype), (self.axes[1],)) if use_bias else None

    def quantized_kernel(self) -> jax.Array:
        """W̃ (in, out) in the latent dtype, with the layer's gradient rule attached; inside a quantization
        warm-up W + λ(W̃ − W) (bitjax.quant.warmup)."""
        if self.quant.weight == "none":
            return self.kernel[...]
        learned = {k: v[...] for k, v in self.qparams.items()}
        frozen = {k: jax.lax.stop_gradient(v[...]) for k, v in self.qstate.items()}
        w = self.kernel[...]
        return warmup.mix(w, self.quant.quantize_weight(w, **learned, **frozen))

    def quantized_input(self, x: jax.Array) -> jax.Array:
        """x̃ = the activation quantizer's x; inside a quantization warm-up x + λ(x̃ − x)."""
        return x if self.quant.act == "none" else warmup.mix(x, self.quant.quantize_act(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        if self.norm is not None:
            x = self.norm(x)
        x = x.astype(dtype)
        w = self.quantized_kernel().astype(dtype)
        if self.quant.weight != "none":  # an fp kernel is no work to redo: saving it would only cost memory
            w = checkpoint_name(w, QUANTIZED_WEIGHT)
        if self.int8_matmul:
            y = int8_matmul(self.quant.quantize_act(x), w, x, self.kernel[...], self.quant)
        else:
            y = jnp.einsum("...i,io->...o", self.quantized_input(x), w, preferred_element_type=jnp.float32).astype(
                dtype
            )
        if self.output_norm is not None:  # OneBit's LayerNorm (no affine), before the bias
            y = self.output_norm(y)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y

    def integer_weights(self) -> dict[str, jax.Array]:
        """Integer codes and the scales that reconstruct W̃, for packing and export.

        ternary/binary: {'codes': int8 (in, out), 'scale': γ broadcastable}, W̃ = codes·scale.
        rtn: {'codes': uint8 in [0, 2^k − 1], 'scale', 'zero'}, W̃ = scale·(codes − zero).
        fbi: {'codes': ±1, 'alpha', 'beta'}, W̃ = alpha[:, None]·codes + beta[:, None] (axis='in').
        onebit: {'codes': ±1, 'g', 'h'}, W̃ = g[:, None]·codes·h[None, :].
        """
        wq, kwargs = self.quant.weight_quantizer()
        w = self.kernel[...]
        if wq.codes is not None:
            return dict(zip(("codes", "scale", "zero"), wq.codes(w, **kwargs)))
        if wq.init is not None and wq.sign_codes:
            return {"codes": sign(w).astype(jnp.int8), **{k: v[...] for k, v in self.qparams.items()}}
        raise ValueError(
            f"weight quantizer {self.quant.weight!r} has no integer form (it is full precision or mixes precisions)"
        )


class Dense(BitDense):
    """Full-precision BitDense (identity quantizers): the FP baseline, same interface and names."""

    def __init__(self, in_features: int, out_features: int, *, quant: QuantSpec | None = None, **kwargs):
        if quant is not None and not quant.is_fp:
            raise ValueError(f"Dense is full precision; got quant={quant}. Use BitDense instead.")
        super().__init__(in_features, out_features, quant=QuantSpec(), **kwargs)
