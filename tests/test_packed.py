"""Packed inference (bitjax.export.packed): 2-bit codes in memory, the training model's logits and greedy tokens."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.eval.sample import generate
from bitjax.export.pack import pack_ternary_2bit
from bitjax.export.packed import PackedDense, pack_model, projection_bytes, unpack_2bit
from bitjax.models import mamba2 as M
from bitjax.models import transformer as T


def b158(dtype="float32", **kw):
    cfg = T.default_config()
    cfg.update(
        dict(
            vocab_size=320,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            mlp_dim=128,
            sub_norm=True,
            dtype=dtype,
            **kw,
        )
    )
    cfg.quant.method = "b158"
    return T.Transformer(cfg, rngs=nnx.Rngs(0))


def test_unpack_in_jax_inverts_the_numpy_packer():
    codes = np.random.default_rng(0).integers(-1, 2, (37, 6)).astype(np.int8)
    np.testing.assert_array_equal(np.asarray(unpack_2bit(jnp.asarray(pack_ternary_2bit(codes)), 37)), codes)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_model_gives_the_training_models_logits_and_greedy_tokens(dtype):
    model = b158(dtype)
    packed = pack_model(model)
    assert isinstance(packed.layers[1].mlp.down_proj, PackedDense)
    assert packed.layers[1].mlp.down_proj.packed[...].dtype == jnp.uint8
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 320, (2, 24)), jnp.int32)
    fwd = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(np.asarray(fwd(packed, tokens)), np.asarray(fwd(model, tokens)))
    if dtype == "bfloat16":  # greedy decoding compiles 2 generators: once is enough
        return
    prompt = tokens[:, :5]
    out_p = generate(packed, prompt, 24, temperature=0)
    out_m = generate(model, prompt, 24, temperature=0)
    np.testing.assert_array_equal(np.asarray(out_p), np.asarray(out_m))
    assert len(set(np.asarray(out_m[0, 5:]).tolist())) > 1  # not a degenerate repeat of one token


def test_packed_weights_take_an_eighth_of_bf16():
    model = b158()
    n = sum(
        m.kernel[...].size
        for l in model.layers
        for m in (
            l.self_attn.q_proj,
            l.self_attn.k_proj,
            l.self_attn.v_proj,
            l.self_attn.o_proj,
            l.mlp.gate_proj,
            l.mlp.up_proj,
            l.mlp.down_proj,
        )
    )
    assert projection_bytes(model) == 4 * n  # latent float32
    assert projection_bytes(pack_model(model)) == n // 4 + 4 * 7 * 2  # 2 bits per weight + one 1/γ per matrix


def test_only_per_tensor_ternary_layers_are_packed():
    cfg = T.default_config()
    cfg.update(dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=64))
    cfg.quant.method = "bitnet"
    with pytest.raises(ValueError, match="PackedDense packs per-tensor ternary_absmean"):
        pack_model(T.Transformer(cfg, rngs=nnx.Rngs(0)))


def test_a_mamba2_models_projections_pack_too():
    """Packing is family-neutral: a b158 Mamba-2's in_proj/out_proj pack, its logits unchanged."""
    cfg = M.default_config()
    cfg.update(dict(vocab_size=64, d_model=32, n_layers=2, d_state=8, headdim=16, chunk_size=8))
    cfg.quant.method = "b158"
    model = M.Mamba2LM(cfg, rngs=nnx.Rngs(0))
    packed = pack_model(model)
    assert isinstance(packed.layers[0].mixer.in_proj, PackedDense)
    assert isinstance(packed.layers[1].mixer.out_proj, PackedDense)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 16)), jnp.int32)
    fwd = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(np.asarray(fwd(packed, tokens)), np.asarray(fwd(model, tokens)))
    n = sum(m.kernel[...].size for l in model.layers for m in (l.mixer.in_proj, l.mixer.out_proj))
    assert projection_bytes(packed) == n // 4 + 4 * 2 * 2
