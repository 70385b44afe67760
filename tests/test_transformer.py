"""Transformer: shapes, causality, GQA, RoPE vs HF's formula, HF names, every quant method, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax import models
from bitjax.models import transformer as T
from bitjax.nn import BitDense, LayerNorm
from bitjax.quant import METHODS, QuantSpec

V = 61


def config(**kw):
    c = T.default_config()
    c.update(dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48))
    for k, v in kw.items():
        if k.startswith("quant_") and k[6:] in c.quant:
            c.quant[k[6:]] = v
        else:
            c[k] = v
    return c


def build(seed=0, **kw):
    return T.Transformer(config(**kw), rngs=nnx.Rngs(seed))


def tokens(b=2, l=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, l)), jnp.int32)


@nnx.jit
def fwd(model, x):
    return model(x)


def param_paths(model):
    return {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def logical_axes(model):
    return {
        ".".join(map(str, p)): v.get_metadata()["out_sharding"]
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_shape_dtype(dtype):
    model = build(dtype=dtype, quant_method="b158")
    logits = fwd(model, tokens())
    assert logits.shape == (2, 12, V) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model)))  # latent params stay fp32


@pytest.mark.parametrize("method", ["fp", "b158"])
def test_causal(method):
    model = build(quant_method=method)
    x = tokens()
    t = 7
    y = x.at[:, t].set((x[:, t] + 1) % V)
    a, b = np.asarray(fwd(model, x)), np.asarray(fwd(model, y))
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-4


def test_gqa_equals_mha_with_tiled_kv():
    gqa = build(n_heads=4, n_kv_heads=2)
    mha = build(n_heads=4, n_kv_heads=4)
    hd, group = 8, 2
    src = nnx.to_pure_dict(nnx.state(gqa))
    dst = nnx.to_pure_dict(nnx.state(mha))
    for i in range(2):
        for name in dst["layers"][i]["self_attn"]:
            w = np.asarray(src["layers"][i]["self_attn"][name]["kernel"])
            if name in ("k_proj", "v_proj"):  # KV head j serves query heads j·G … j·G+G−1 (HF repeat_kv)
                w = np.repeat(w.reshape(32, 2, hd), group, axis=1).reshape(32, 4 * hd)
            dst["layers"][i]["self_attn"][name]["kernel"] = jnp.asarray(w)
        for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
            dst["layers"][i][name] = src["layers"][i][name]
    for name in ("embed_tokens", "norm", "lm_head"):
        dst[name] = src[name]
    state = nnx.state(mha)
    nnx.replace_by_pure_dict(state, dst)
    nnx.update(mha, state)
    x = tokens()
    np.testing.assert_allclose(np.asarray(fwd(mha, x)), np.asarray(fwd(gqa, x)), rtol=1e-5, atol=1e-5)


def np_hf_rope(q_bhld, positions, theta):
    """HF LlamaRotaryEmbedding + apply_rotary_pos_emb, torch ops spelled in numpy (q: [B, H, L, hd])."""
    hd = q_bhld.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))
    freqs = (inv_freq[None, :, None] @ positions[None, None, :].astype(np.float32)).transpose(0, 2, 1)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]  # unsqueeze_dim=1

    def rotate_half(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([-x2, x1], axis=-1)

    return q_bhld * cos + rotate_half(q_bhld) * sin


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_matches_hf(theta):
    q = np.random.default_rng(0).standard_normal((2, 3, 9, 16)).astype(np.float32)  # [B, H, L, hd]
    positions = np.arange(5, 14)
    ref = np_hf_rope(q, positions, theta)
    cos, sin = T.rope_cos_sin(jnp.asarray(positions), 16, theta)
    got = T.apply_rope(jnp.asarray(q.transpose(0, 2, 1, 3)), cos, sin)  # ours: [B, L, H, hd]
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1, 3), ref, rtol=1e-5, atol=1e-5)


HF_NAMES_2L_SUBNORM = {
    "embed_tokens.embedding": "model.embed_tokens.weight",
    "norm.scale": "model.norm.weight",
    "lm_head.kernel": "lm_head.weight",
    **{
        k.format(i=i): v.format(i=i)
        for i in range(2)
        for k, v in {
            "layers.{i}.input_layernorm.scale": "model.layers.{i}.input_layernorm.weight",
            "layers.{i}.self_attn.q_proj.kernel": "model.layers.{i}.self_attn.q_proj.weight",
            "layers.{i}.self_attn.k_proj.kernel": "model.layers.{i}.self_attn.k_proj.weight",
            "layers.{i}.self_attn.v_proj.kernel": "model.layers.{i}.self_attn.v_proj.weight",
            "layers.{i}.self_attn.o_proj.kernel": "model.layers.{i}.self_attn.o_proj.weight",
            "layers.{i}.self_attn.attn_sub_norm.scale": "model.layers.{i}.self_attn.attn_sub_norm.weight",
            "layers.{i}.post_attention_layernorm.scale": "model.layers.{i}.post_attention_layernorm.weight",
            "layers.{i}.mlp.gate_proj.kernel": "model.layers.{i}.mlp.gate_proj.weight",
            "layers.{i}.mlp.up_proj.kernel": "model.layers.{i}.mlp.up_proj.weight",
            "layers.{i}.mlp.down_proj.kernel": "model.layers.{i}.mlp.down_proj.weight",
            "layers.{i}.mlp.ffn_sub_norm.scale": "model.layers.{i}.mlp.ffn_sub_norm.weight",
        }.items()
    },
}


def test_hf_param_names_2_layers_sub_norm():
    model = build(sub_norm=True, quant_method="b158", activation="relu2")
    names = T.hf_param_names(model)
    assert names == HF_NAMES_2L_SUBNORM
    assert set(names) == param_paths(model)  # every param exactly once
    assert len(set(names.values())) == len(names)


def test_hf_param_names_learned_quantizer_and_in_layer_norm():
    fbi = T.hf_param_names(build(quant_method="fbi", tie_embeddings=True))
    assert fbi["layers.1.self_attn.q_proj.qparams.alpha"] == "model.layers.1.self_attn.q_proj.alpha"
    assert fbi["layers.0.mlp.down_proj.qparams.beta"] == "model.layers.0.mlp.down_proj.beta"
    assert not any(k.startswith("lm_head") for k in fbi)
    bitnet = build(quant_method="bitnet")
    assert isinstance(bitnet.layers[0].self_attn.q_proj.norm, LayerNorm)
    names = T.hf_param_names(bitnet)  # BitNet v1's in-layer LayerNorm has no affine parameters
    assert not any(".norm." in k for k in names) and set(names) == param_paths(build(quant_method="b158"))
    rms = T.hf_param_names(build(quant_method="b158", quant_rules="*_proj: norm=rms"))
    assert rms["layers.0.mlp.up_proj.norm.scale"] == "model.layers.0.mlp.up_proj.rms_norm.weight"
    for n in (names, rms):
        assert len(set(n.values())) == len(n)


def test_logical_axes():
    axes = logical_axes(build(sub_norm=True))
    expect = {
        "embed_tokens.embedding": ("vocab", "embed"),
        "lm_head.kernel": ("embed", "vocab"),
        "norm.scale": ("embed",),
        "layers.0.input_layernorm.scale": ("embed",),
        "layers.0.post_attention_layernorm.scale": ("embed",),
        "layers.0.self_attn.q_proj.kernel": ("embed", "heads"),
        "layers.0.self_attn.k_proj.kernel": ("embed", "kv_heads"),
        "layers.0.self_attn.v_proj.kernel": ("embed", "kv_heads"),
        "layers.0.self_attn.o_proj.kernel": ("heads", "embed"),
        "layers.0.self_attn.attn_sub_norm.scale": ("heads",),
        "layers.0.mlp.gate_proj.kernel": ("embed", "mlp"),
        "layers.0.mlp.up_proj.kernel": ("embed", "mlp"),
        "layers.0.mlp.down_proj.kernel": ("mlp", "embed"),
        "layers.0.mlp.ffn_sub_norm.scale": ("mlp",),
    }
    for k, v in expect.items():
        assert tuple(axes[k]) == v, k


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"bimamba"}))
def test_every_method_forward_and_grads(method):
    model = build(quant_method=method, n_layers=1)
    graphdef, params = nnx.split(model)
    x = tokens(l=8)

    @jax.jit
    def loss_and_grad(params):
        def loss(p):
            logits = nnx.merge(graphdef, p)(x[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1))

        return jax.value_and_grad(loss)(params)

    loss, grads = loss_and_grad(params)
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    q_grad = grads["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    assert np.abs(np.asarray(q_grad)).max() > 0  # the straight-through rule passes gradient


def test_sub_norm_changes_param_set():
    off, on = param_paths(build(sub_norm=False)), param_paths(build(sub_norm=True))
    assert on - off == {
        f"layers.{i}.{m}.scale" for i in range(2) for m in ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
    }
    assert off <= on


def test_a48_is_the_papers_scheme():
    """a4.8 §2.1: INT4 absmean into q/k/v/gate/up, top-K 50% + INT8 into o_proj, INT8 into down_proj."""
    layer = build(quant_method="a48", quant_stage1="none").layers[0]
    for proj in (
        layer.self_attn.q_proj,
        layer.self_attn.k_proj,
        layer.self_attn.v_proj,
        layer.mlp.gate_proj,
        layer.mlp.up_proj,
    ):
        assert proj.quant == QuantSpec("ternary_absmean", "absmean4")
    assert layer.self_attn.o_proj.quant == QuantSpec("ternary_absmean", "topk_absmax8", act_options=(("keep", 0.5),))
    assert layer.mlp.down_proj.quant == QuantSpec("ternary_absmean", "absmax8")
    # two stages: W1.58A8 (b158) for the first 95% of the steps, then the hybrid scheme
    stages = T.stage_configs(config(quant_method="a48"), 1000)
    assert [(start, c.quant.method) for start, c in stages] == [(0, "b158"), (950, "a48")]
    assert [(s, c.quant.method) for s, c in T.stage_configs(config(quant_method="a48", quant_stage2_frac=0.5), 10)] == [
        (0, "b158"),
        (5, "a48"),
    ]
    assert len(T.stage_configs(config(quant_method="a48", quant_stage1="none"), 1000)) == 1


def test_recipe_rules_override_roles_and_reach_embeddings():
    model = build(quant_method="b158", quant_rules="down_proj: act=absmax4; embed|lm_head: weight=ternary_absmean")
    assert model.layers[0].mlp.down_proj.quant == QuantSpec("ternary_absmean", "absmax4")
    assert model.layers[0].mlp.up_proj.quant == QuantSpec("ternary_absmean", "absmax8")
    assert isinstance(model.lm_head, BitDense) and model.lm_head.quant == QuantSpec("ternary_absmean")
    assert model.embed_tokens.quant.weight == "ternary_absmean"
    # the looked-up rows come from the ternary table: 3 distinct values
    assert len(np.unique(np.asarray(model.embed_tokens(tokens())))) <= 3
    fp = build(quant_method="b158")
    assert fp.lm_head.quant.is_fp and fp.embed_tokens.quant is None
    tied = build(quant_method="fbi", tie_embeddings=True, quant_rules="lm_head: weight=fbi")
    assert tied.lm_head is None and set(tied.embed_tokens.qparams) == {"alpha", "beta"}
    assert tied.embed_tokens.qparams["alpha"].shape == (V,)  # per input feature of the (vocab, d) table
    assert np.isfinite(np.asarray(fwd(tied, tokens()))).all()


def test_out_norm_rule_reaches_projections_and_is_refused_on_table_lookups():
    model = build(quant_method="fp", quant_rules="*_proj: out_norm=layer")
    assert model.layers[0].mlp.down_proj.quant == QuantSpec(out_norm="layer")
    assert model.layers[0].mlp.down_proj.output_norm is not None and model.lm_head.quant.is_fp
    assert np.isfinite(np.asarray(fwd(model, tokens()))).all()
    with pytest.raises(ValueError, match="the embed role .* has no input or output norm"):
        build(quant_method="fp", quant_rules="embed: out_norm=layer")
    with pytest.raises(ValueError, match="the lm_head role .*tied head.* drop norm / out_norm"):
        build(quant_method="fp", tie_embeddings=True, quant_rules="lm_head: weight=onebit")


def test_a_recipe_for_another_family_is_refused():
    with pytest.raises(ValueError, match=r"'in_proj\|out_proj: weight=fbi' matches no layer of this model"):
        build(quant_method="bimamba")


def test_remat_same_loss_and_grads():
    x = tokens()

    @nnx.jit
    def loss_grad(model):
        return nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)

    (l0, g0), (l1, g1) = loss_grad(build(quant_method="b158")), loss_grad(build(quant_method="b158", remat=True))
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["fp", "a48", "bitnet_v2"])
def test_kv_cache_decode_matches_full_forward(method):
    model = build(quant_method=method, sub_norm=True)
    x = tokens(l=10)
    full = np.asarray(fwd(model, x))
    decode = nnx.jit(lambda m, toks, cache, index: m.decode(toks, cache, index))
    a, cache = decode(model, x[:, :6], model.init_cache(2, 10), 0)  # prefill 6, then 4 single tokens
    steps = [a]
    for t in range(6, 10):
        y, cache = decode(model, x[:, t : t + 1], cache, t)
        steps.append(y)
    np.testing.assert_allclose(np.concatenate([np.asarray(s) for s in steps], 1), full, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("n_kv_heads", 3, r"config\.model\.n_kv_heads=3 is invalid: must divide config\.model\.n_heads=4"),
        ("n_heads", 0, r"config\.model\.n_heads=0 is invalid: must be a positive int"),
        ("d_model", 30, r"config\.model\.d_model=30 is invalid: must be divisible by config\.model\.n_heads"),
        ("head_dim", 7, r"config\.model\.head_dim=7 is invalid: must be a positive even int"),
        ("activation", "gelu", r"config\.model\.activation='gelu' is invalid: choose one of \('silu', 'relu2'\)"),
        ("dtype", "float16", r"config\.model\.dtype='float16'"),
        ("rope_theta", -1.0, r"config\.model\.rope_theta=-1\.0 is invalid: must be a positive number"),
        ("quant_method", "ternary", r"config\.model\.quant\.method='ternary' is invalid: choose one of"),
        ("quant_grad", "ste", r"config\.model\.quant\.grad='ste' is invalid: unknown gradient rule"),
        ("quant_rules", "*_proj: act=absmax99", r"config\.model\.quant .* is invalid: .*'absmax99'"),
        ("quant_rules", "*_proj: weight=int3", r"config\.model\.quant .* is invalid: .*'int3'"),
        ("quant_rules", "*_proj: norm=batch", r"config\.model\.quant .* is invalid: .*'batch'"),
        ("quant_rules", "q_proj act=absmax4", r"config\.model\.quant\.rules='q_proj act=absmax4' is invalid"),
        ("quant_rules", "qproj: act=absmax4", r"'qproj: act=absmax4' matches no layer"),
        ("quant_stage1", "b159", r"config\.model\.quant\.stage1='b159' is invalid"),
        ("quant_stage2_frac", 1.5, r"config\.model\.quant\.stage2_frac=1\.5 is invalid"),
    ],
)
def test_validate_config_names_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        T.validate_config(config(**{field: value}))
    with pytest.raises(ValueError, match=match):  # the trainer's entry point and the constructor agree
        models.validate(config(**{field: value}))


def test_validate_config_unknown_field_and_option():
    c = config()
    with c.unlocked():
        c.n_expert = 4
    with pytest.raises(ValueError, match=r"config\.model: unknown field\(s\) \['n_expert'\]"):
        T.validate_config(c)
    c = config(quant_method="b158")
    c.quant.rules = "*_proj: act.keep=0.5"  # absmax8 has no 'keep'
    with pytest.raises(ValueError, match=r"config\.model\.quant .* is invalid: .*no option 'keep'"):
        T.validate_config(c)


def test_registry_and_sizes():
    assert models.get_model("transformer") is T.Transformer
    assert models.size_hints("transformer")["mlp"] == "config.model.mlp_dim"
    with pytest.raises(ValueError, match=r"config\.model\.name='gpt'"):
        models.get_model("gpt")
    counts = {}
    for size, overrides in T.SIZES.items():
        c = T.default_config()
        c.update(overrides)
        if c.vocab_size == 259:
            c.vocab_size = 32000
        T.validate_config(c)
        abstract = nnx.eval_shape(lambda c=c: T.Transformer(c, rngs=nnx.Rngs(0)))
        counts[size] = sum(x.size for x in jax.tree.leaves(nnx.state(abstract)))
    assert 100e6 < counts["small"] < 150e6
    assert 0.9e9 < counts["1b"] < 1.3e9  # Llama 3.2 1B (1.24B with its 128k vocab)
    assert 2.3e9 < counts["2b4t"] == counts["3b"] < 2.5e9  # BitNet b1.58 2B4T: 2.4B
    assert 6.5e9 < counts["7b"] < 7e9
