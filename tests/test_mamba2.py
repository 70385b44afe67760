"""Mamba-2 LM: shapes, causality, init as mamba_ssm, logical axes, recipes (bimamba = FBI on in/out_proj),
config checks, and the decode cache (prefill + one-token steps == the full forward; the sampler)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax import models
from bitjax.eval.sample import generate
from bitjax.models import mamba2 as M
from bitjax.models import transformer as T
from bitjax.quant import QuantSpec
from bitjax.run import mesh as mesh_lib

V = 61


def config(**kw):
    c = M.default_config()
    c.update(dict(vocab_size=V, d_model=32, n_layers=2, d_state=8, headdim=16, chunk_size=8))
    for k, v in kw.items():
        if k.startswith("quant_"):
            c.quant[k[6:]] = v
        else:
            c[k] = v
    return c


def build(seed=0, **kw):
    return M.Mamba2LM(config(**kw), rngs=nnx.Rngs(seed))


def tokens(b=2, l=13, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, l)), jnp.int32)


@nnx.jit
def fwd(model, x):
    return model(x)


def flat(model):
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_shape_dtype_and_registry(dtype):
    assert models.get_model("mamba2") is M.Mamba2LM
    model = build(dtype=dtype, quant_method="bimamba")
    logits = fwd(model, tokens())
    assert logits.shape == (2, 13, V) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model)))


@pytest.mark.parametrize("method", ["fp", "bimamba"])
def test_causal(method):
    model = build(quant_method=method, ngroups=2)
    x = tokens(l=20)
    t = 11
    y = x.at[:, t].set((x[:, t] + 1) % V)
    a, b = np.asarray(fwd(model, x)), np.asarray(fwd(model, y))
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-4


def test_init_is_mamba_ssm_s():
    c = config(d_model=64, headdim=8)  # 16 heads per layer, 2 layers
    p = flat(M.Mamba2LM(c, rngs=nnx.Rngs(1)))
    A = np.exp(np.concatenate([np.asarray(p[f"layers.{i}.mixer.A_log"].get_value()) for i in range(2)]))
    assert A.min() >= 1.0 and A.max() <= 16.0 and A.max() - A.min() > 5  # U(1, 16)
    dt_bias = np.concatenate([np.asarray(p[f"layers.{i}.mixer.dt_bias"].get_value()) for i in range(2)])
    dt = np.log1p(np.exp(dt_bias))  # softplus(dt_bias) = the initial Δ
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    np.testing.assert_array_equal(p["layers.0.mixer.D"].get_value(), 1.0)
    k = np.asarray(p["layers.0.mixer.conv1d.kernel"].get_value())
    assert k.shape == (4, 2 * 64 + 2 * 8) and np.abs(k).max() <= 0.5  # U(±1/√4)
    # mixer_seq_simple._init_weights: Linears keep torch's kaiming_uniform_(a=√5), bound gain·√(3/fan_in)
    # with gain = √(2/(1 + a²)); out_proj is then divided by √(n_residuals_per_layer · n_layer) = √(1 · 2)
    kaiming = lambda fan_in: np.sqrt(2 / (1 + 5)) * np.sqrt(3 / fan_in)
    for name, bound in (("in_proj", kaiming(64)), ("out_proj", kaiming(2 * 64) / np.sqrt(2))):
        w = np.asarray(p[f"layers.0.mixer.{name}.kernel"].get_value())
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.97 * bound, name  # uniform: fills ±bound
        assert abs(w.std() - bound / np.sqrt(3)) < 0.03 * bound / np.sqrt(3), name  # U(±b) has std b/√3


def test_every_param_has_logical_axes_known_to_the_default_rules():
    model = build(tie_embeddings=False, quant_method="bimamba")
    for path, var in flat(model).items():
        names = var.get_metadata()["out_sharding"]
        assert names is not None and len(names) == var.get_value().ndim, path
        mesh_lib.logical_to_pspec(names, mesh_lib.DEFAULT_RULES)  # raises for an unknown name
    axes = {k: v.get_metadata()["out_sharding"] for k, v in flat(model).items()}
    assert axes["layers.0.mixer.in_proj.kernel"] == ("embed", "ssm_in")
    assert axes["layers.0.mixer.out_proj.kernel"] == ("heads", "embed")
    assert axes["layers.0.mixer.A_log"] == ("heads",)
    assert axes["layers.0.mixer.in_proj.qparams.alpha"] == ("embed",)  # FBI: one α per input feature


def test_bimamba_binarizes_in_and_out_proj_only_with_fbi():
    table = M.quant_table(config(quant_method="bimamba"))
    assert table["in_proj"] == QuantSpec("fbi") and table["out_proj"] == QuantSpec("fbi")
    assert table["embed"].is_fp and table["lm_head"].is_fp
    model = build(quant_method="bimamba")
    mixer = model.layers[0].mixer
    w = mixer.in_proj.kernel.get_value()
    alpha, beta = mixer.in_proj.qparams["alpha"].get_value(), mixer.in_proj.qparams["beta"].get_value()
    assert alpha.shape == beta.shape == (32,)  # per input feature (Bi-Mamba eq. 4)
    np.testing.assert_allclose(beta, w.mean(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(alpha, np.abs(w - w.mean(axis=1, keepdims=True)).mean(axis=1), rtol=1e-5)
    wq = np.asarray(mixer.in_proj.quantized_kernel())
    np.testing.assert_allclose(wq, alpha[:, None] * np.where(w >= 0, 1.0, -1.0) + beta[:, None], rtol=1e-6)
    # quantization changes the logits (it is really applied)
    fp = build(quant_method="fp")
    x = tokens()
    assert np.abs(np.asarray(fwd(model, x)) - np.asarray(fwd(fp, x))).max() > 1e-3
    # conv1d, A_log, D, dt_bias, norms stay full precision: no learned scales anywhere else
    assert {k for k in flat(model) if "qparams" in k} == {
        f"layers.{i}.mixer.{p}.qparams.{s}"
        for i in range(2)
        for p in ("in_proj", "out_proj")
        for s in ("alpha", "beta")
    }


def test_methods_across_families():
    assert M.quant_table(config(quant_method="b158"))["in_proj"] == QuantSpec("ternary_absmean", "absmax8")
    assert M.quant_table(config(quant_method="fp"))["in_proj"].is_fp
    with pytest.raises(ValueError, match=r"config.model.quant .*a48.*invalid for mamba2.*o_proj.*matches no layer"):
        M.validate_config(config(quant_method="a48"))
    with pytest.raises(ValueError, match=r"in_proj\|out_proj: weight=fbi' matches no layer"):
        T.validate_config(_bimamba_transformer())
    b = build(quant_method="b158", quant_rules="out_proj: weight=none, act=none")
    assert b.layers[0].mixer.out_proj.quant.is_fp and not b.layers[0].mixer.in_proj.quant.is_fp


def _bimamba_transformer():
    c = T.default_config()
    c.quant.method = "bimamba"
    return c


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("headdim", 24, r"config.model.headdim=24 is invalid: must divide d_inner"),
        ("ngroups", 3, r"config.model.ngroups=3 is invalid: must divide the number of heads 4"),
        ("d_state", 0, r"config.model.d_state=0 is invalid: must be a positive int"),
        ("dt_min", 0.5, r"config.model.dt_min=0.5 is invalid: must be ≤ config.model.dt_max"),
        ("dtype", "float16", r"config.model.dtype='float16' is invalid"),
        ("quant_method", "nope", r"config.model.quant.method='nope' is invalid"),
    ],
)
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        models.validate(config(**{field: value}))


@pytest.mark.slow
def test_remat_gives_the_same_logits_and_grads():
    x = tokens()
    a, b = build(), build(remat=True)
    grad = nnx.jit(nnx.grad(lambda m: jnp.mean(m(x) ** 2)))
    np.testing.assert_allclose(fwd(a, x), fwd(b, x), rtol=1e-6, atol=1e-6)
    ga, gb = grad(a), grad(b)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method, ngroups, tie", [("fp", 1, True), ("bimamba", 2, False)])
def test_cached_decode_equals_full_forward(method, ngroups, tie):
    """Prefill 5 tokens (chunked SSD from a zero state), then 12 one-token steps (ssd_step): every position's
    logits equal the full forward's (f32, ≤ 1e-5)."""
    model = build(quant_method=method, ngroups=ngroups, tie_embeddings=tie)
    x = tokens(l=17, seed=3)
    full = np.asarray(fwd(model, x))
    decode = nnx.jit(lambda m, t, c: m.decode(t, c, None))
    logits, cache = decode(model, x[:, :5], model.init_cache(2, 17))
    got = [np.asarray(logits)]
    for i in range(5, 17):
        logits, cache = decode(model, x[:, i : i + 1], cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * np.abs(full).max())
    # a multi-token chunk after a prefill (chunked SSD with an initial state) agrees too
    logits, cache = decode(model, x[:, :9], model.init_cache(2, 17))
    logits2, _ = decode(model, x[:, 9:], cache)
    np.testing.assert_allclose(np.asarray(logits2), full[:, 9:], rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.slow
def test_sampler_greedy_matches_full_forward_argmax():
    model = build(quant_method="bimamba")
    prompt = tokens(l=5, seed=4)
    out = generate(model, prompt, 4, temperature=0)
    seq = prompt
    for _ in range(4):
        nxt = jnp.argmax(fwd(model, seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(seq))
