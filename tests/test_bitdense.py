"""BitDense / Dense: forward = composed primitives = HF AutoBitLinear restated in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.nn import BitDense, Dense, RMSNorm
from bitjax.quant import METHODS, QuantSpec, absmax_act, recipe, ternary_absmean

B158 = QuantSpec("ternary_absmean", "absmax8")


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def np_autobitlinear(x, weight_out_in, rms_weight=None, eps=1e-6):
    """HF transformers AutoBitLinear.forward (online quant), with the torch ops spelled in numpy."""
    if rms_weight is not None:  # BitNetRMSNorm
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * rms_weight
    s = np.float32(127) * (np.float32(1) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5)))
    x = np.clip(np.round(x * s), -128, 127) / s
    ws = 1.0 / max(np.abs(weight_out_in).mean(), 1e-5)
    w = np.clip(np.round(weight_out_in * ws), -1, 1) / ws
    return x @ w.T


def test_b158_matches_hf_autobitlinear():
    layer = BitDense(32, 16, quant=B158, rngs=nnx.Rngs(0))
    x = rand((2, 5, 32), 1)
    got = np.asarray(layer(jnp.asarray(x)))
    ref = np_autobitlinear(x, np.asarray(layer.kernel[...]).T)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_b158_with_rms_norm_matches_hf():
    layer = BitDense(32, 16, quant=QuantSpec("ternary_absmean", "absmax8", norm="rms"), rngs=nnx.Rngs(1))
    layer.norm.scale[...] = jnp.asarray(rand((32,), 7) + 1)
    x = rand((3, 32), 2)
    ref = np_autobitlinear(x, np.asarray(layer.kernel[...]).T, np.asarray(layer.norm.scale[...]))
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), ref, rtol=1e-4, atol=1e-4)


def test_forward_equals_composed_primitives():
    layer = BitDense(16, 8, quant=QuantSpec("ternary_absmean", "absmax4", "clipped", norm="rms"), rngs=nnx.Rngs(2))
    x = jnp.asarray(rand((4, 16), 3))
    norm = RMSNorm(16)
    expect = absmax_act(norm(x), 4) @ ternary_absmean(layer.kernel[...])
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(expect), rtol=1e-6, atol=1e-6)


def test_dense_is_plain_matmul_and_rejects_quant():
    layer = Dense(16, 8, use_bias=True, rngs=nnx.Rngs(3))
    layer.bias[...] = jnp.arange(8.0)
    x = jnp.asarray(rand((4, 16), 4))
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(x @ layer.kernel[...] + jnp.arange(8.0)), rtol=1e-6)
    with pytest.raises(ValueError, match="full precision"):
        Dense(4, 4, quant=B158, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("weight", ["ternary_absmean", "binary_mean", "rtn4", "fbi", "onebit"])
def test_integer_weights_reconstruct_quantized_kernel(weight):
    layer = BitDense(16, 8, quant=QuantSpec(weight), rngs=nnx.Rngs(5))
    iw = layer.integer_weights()
    assert iw["codes"].dtype == (jnp.uint8 if weight == "rtn4" else jnp.int8)
    c = iw["codes"].astype(jnp.float32)
    if weight == "fbi":
        rec = iw["alpha"][:, None] * c + iw["beta"][:, None]
    elif weight == "onebit":
        rec = iw["g"][:, None] * c * iw["h"][None]
    elif weight == "rtn4":
        assert int(iw["codes"].max()) <= 15
        rec = iw["scale"] * (c - iw["zero"])
    else:
        rec = c * iw["scale"]
    np.testing.assert_allclose(np.asarray(rec), np.asarray(layer.quantized_kernel()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weight", ["none", "ternary_absmean"])
def test_out_norm_layer_is_affine_free_layernorm_of_the_output_before_the_bias(weight):
    # OneBit's output LayerNorm (Xu et al. 2024, bitnet.py l. 47) on any layer: y = LN(x·W̃) + b
    spec = QuantSpec(weight, out_norm="layer")
    layer = BitDense(16, 8, quant=spec, use_bias=True, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.arange(8.0)
    x = rand((3, 16), 7)
    z = x @ np.asarray(layer.quantized_kernel(), np.float64)
    want = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) + np.arange(8.0)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)
    assert not spec.is_fp and str(spec).endswith("out_norm=layer")
    assert QuantSpec("onebit").output_norm() is QuantSpec("onebit", out_norm="layer").output_norm()
    with pytest.raises(ValueError, match="unknown output norm 'rms'"):
        QuantSpec(out_norm="rms")


def test_params_carry_logical_axes_and_float32():
    layer = BitDense(16, 8, quant=QuantSpec("fbi", norm="rms"), use_bias=True, axes=("mlp", "embed"), rngs=nnx.Rngs(0))
    meta = {
        "/".join(map(str, p)): v.get_metadata()["out_sharding"]
        for p, v in nnx.to_flat_state(nnx.state(layer, nnx.Param))
    }
    assert meta == {
        "kernel": ("mlp", "embed"),
        "bias": ("embed",),
        "qparams/alpha": ("mlp",),
        "qparams/beta": ("mlp",),
        "norm/scale": ("mlp",),
    }
    out = BitDense(
        16, 8, quant=QuantSpec("fbi", weight_options=(("axis", "out"),)), axes=("mlp", "embed"), rngs=nnx.Rngs(0)
    )
    assert out.qparams["alpha"].get_metadata()["out_sharding"] == ("embed",)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(layer, nnx.Param)))


def test_bf16_compute_keeps_float32_latents_and_grads():
    layer = BitDense(32, 16, quant=B158, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(rand((2, 32), 6))
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    g = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32) ** 2))(layer)
    assert g.kernel[...].dtype == jnp.float32 and bool(jnp.isfinite(g.kernel[...]).all())


def test_learned_scales_train():
    layer = BitDense(8, 4, quant=QuantSpec("fbi"), rngs=nnx.Rngs(0))
    x = jnp.asarray(rand((3, 8), 7))
    g = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert float(jnp.abs(g.qparams["alpha"][...]).sum()) > 0
    assert float(jnp.abs(g.qparams["beta"][...]).sum()) > 0


def test_every_method_builds_runs_and_differentiates_under_jit():
    x = jnp.asarray(rand((2, 3, 16), 8))
    roles = ("q_proj", "o_proj", "down_proj", "in_proj")
    for method in METHODS:
        for spec in {recipe(method).spec(role) for role in roles}:
            layer = BitDense(16, 8, quant=spec, rngs=nnx.Rngs(0))
            y = nnx.jit(lambda m, x: m(x))(layer, x)
            g = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
            assert y.shape == (2, 3, 8) and all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(g))


def test_bitnet_v1_layer_normalises_without_affine_params():
    layer = BitDense(16, 8, quant=recipe("bitnet").spec("q_proj"), rngs=nnx.Rngs(0))
    assert [p for p, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param))] == [("kernel",)]
    x = rand((3, 16), 9) * 5 + 2
    xn = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    qb = 128
    gamma = np.abs(xn).max(-1, keepdims=True)
    xq = np.clip(np.round(xn * qb / gamma), -qb, qb - 1) * gamma / qb
    w = np.asarray(layer.kernel[...])
    wq = np.where(w - w.mean() >= 0, 1.0, -1.0) * np.abs(w).mean()
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), xq @ wq, rtol=1e-4, atol=1e-5)


def test_quant_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown weight quantizer 'ternery'"):
        QuantSpec("ternery")
    with pytest.raises(ValueError, match="unknown activation quantizer 'absmax99x'"):
        QuantSpec(act="absmax99x")
    with pytest.raises(ValueError, match="unknown gradient rule"):
        QuantSpec(grad="ste")
    with pytest.raises(ValueError, match="has no option 'keep'"):
        QuantSpec(act="absmax8", act_options=(("keep", 0.5),))
    with pytest.raises(ValueError, match="unknown in-layer norm"):
        QuantSpec(norm="batch")


def test_onebit_layer_is_the_references_bitlinear():
    """xuyuzhuang11/OneBit BitLinear.forward: LayerNorm_noaffine(((x ⊙ g) · sign(W)ᵀ) ⊙ h), eps 1e-5."""
    layer = BitDense(16, 8, quant=recipe("onebit").spec("q_proj"), rngs=nnx.Rngs(0))
    assert layer.quant.grad == "tanh"
    x = rand((3, 16), 10)
    g, h = np.asarray(layer.qparams["g"][...]), np.asarray(layer.qparams["h"][...])
    w_torch = np.asarray(layer.kernel[...]).T  # (out, in)
    y = ((x * g) @ np.where(w_torch >= 0, 1.0, -1.0).T) * h
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), y, rtol=1e-4, atol=1e-5)


def test_pb_llm_layer_keeps_its_mask_and_frozen_salient_values():
    layer = BitDense(32, 16, quant=recipe("pb_llm").spec("up_proj"), rngs=nnx.Rngs(0))
    mask = np.asarray(layer.qstate["mask"][...]) > 0
    assert 0.05 < mask.mean() < 0.15  # 10% salient
    before = np.asarray(layer.quantized_kernel())
    # training moves the latent kernel: the salient entries keep their frozen 8-bit values,
    # the mask does not follow the new magnitudes, and the binarized part tracks sign(W)
    layer.kernel[...] = layer.kernel[...] * 3 + 0.01
    after = np.asarray(layer.quantized_kernel())
    np.testing.assert_array_equal(after[mask], before[mask])
    np.testing.assert_array_equal(np.asarray(layer.qstate["mask"][...]) > 0, mask)
    w = np.asarray(layer.kernel[...])
    alpha = np.abs(w[~mask]).mean()
    np.testing.assert_allclose(after[~mask], np.where(w[~mask] >= 0, alpha, -alpha), rtol=1e-5)
    graphdef, state = nnx.split(layer)  # the trainer differentiates the whole state, as here
    x = jnp.asarray(rand((2, 32), 11))
    g = nnx.to_pure_dict(jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x)))(state))
    assert np.all(np.asarray(g["kernel"])[mask] == 0) and np.any(np.asarray(g["kernel"])[~mask] != 0)
    assert not any(np.any(np.asarray(v)) for v in g["qstate"].values())  # the state gets no gradient
