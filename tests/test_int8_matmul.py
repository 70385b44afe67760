"""int8 matmul option: forward = exact integer sums then one rescale (numpy restatement), backward =
the fake-quant path's bit for bit, the option reaches every quantized projection, and it trains alike."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bitjax.models import transformer as T
from bitjax.nn import BitDense
from bitjax.quant import QuantSpec
from bitjax.run import config as config_lib

B158 = QuantSpec("ternary_absmean", "absmax8")
SPECS = {
    "b158": B158,
    "b158_clipped": QuantSpec("ternary_absmean", "absmax8", "clipped"),
    "absmax4": QuantSpec("ternary_absmean", "absmax4"),
    "a48_int4_channel": QuantSpec("ternary_absmean", "absmean4", weight_options=(("granularity", "channel"),)),
    "a48_topk8": QuantSpec("ternary_absmean", "topk_absmax8", act_options=(("keep", 0.5),)),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def dyadic(shape, seed, bound, step):
    """Integers in [−bound, bound] times `step` (a power of 2): exact in bfloat16 for bound < 256, and every
    float32 sum of them is exact, so mean|W|, mean|x| and the scales do not depend on summation order."""
    return (np.random.default_rng(seed).integers(-bound, bound + 1, shape) * step).astype(np.float32)


def np_int8_matmul(x, w, spec: QuantSpec):
    """The integer forward restated in numpy: codes, exact int64 sums, then y = Σ·(m_x·m_w) in float32."""
    f32 = np.float32
    x, w = x.astype(f32), w.astype(f32)

    def mean_abs(v, axis):  # XLA forms a mean as sum · (1/n); the sums here are exact (dyadic inputs)
        n = np.prod([v.shape[a] for a in np.atleast_1d(axis)])
        return np.abs(v).sum(axis, keepdims=True, dtype=f32) * f32(1 / n)

    act_opts = dict(spec.act_options)
    if spec.act.startswith("absmean"):
        qp = 2 ** (int(spec.act[7:]) - 1) - 1
        beta = mean_abs(x, -1)
        cx = np.clip(np.round(f32(math.sqrt(qp)) * x / (beta + f32(1e-5))), -qp - 1, qp)
        mx = beta * f32(1 / math.sqrt(qp))
    else:
        qp = 2 ** (int(spec.act.rsplit("absmax", 1)[1]) - 1) - 1
        if spec.act.startswith("topk"):  # keep the ⌈keep·d⌉ largest |x| of each token
            k = math.ceil(act_opts["keep"] * x.shape[-1])
            kth = -np.sort(-np.abs(x), axis=-1)[..., k - 1 : k]
            x = np.where(np.abs(x) >= kth, x, f32(0))
        s = f32(qp) * (f32(1) / np.maximum(np.abs(x).max(-1, keepdims=True), f32(1e-5)))
        cx = np.clip(np.round(x * s), -qp - 1, qp)
        mx = f32(1) / s
    axis = (0,) if dict(spec.weight_options).get("granularity") == "channel" else (0, 1)
    inv = f32(1) / np.maximum(mean_abs(w, axis), f32(1e-5))
    cw = np.clip(np.round(w * inv), -1, 1)
    acc = cx.astype(np.int64) @ cw.astype(np.int64)  # exact
    assert np.abs(acc).max() < 2**24  # so float32(acc) is exact too
    return acc.astype(f32) * (mx * (f32(1) / inv))


def layer_pair(spec, dtype, d_in=96, d_out=40, seed=0):
    fake = BitDense(d_in, d_out, quant=spec, dtype=dtype, rngs=nnx.Rngs(seed))
    int8 = BitDense(d_in, d_out, quant=spec, dtype=dtype, int8_matmul=True, rngs=nnx.Rngs(seed))
    return fake, int8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SPECS)
def test_forward_is_exact_integer_sums_then_one_rescale(name, dtype):
    spec, dt = SPECS[name], DTYPES[dtype]
    fake, int8 = layer_pair(spec, dt)
    for layer in (fake, int8):
        layer.kernel[...] = jnp.asarray(dyadic((96, 40), 0, 40, 2.0**-11))
    x = jnp.asarray(dyadic((3, 7, 96), 1, 200, 2.0**-6)).astype(dt)
    ref = np_int8_matmul(np.asarray(x.astype(jnp.float32)), np.asarray(int8.kernel[...]), spec)
    got = np.asarray(jax.jit(lambda x: int8(x))(x).astype(jnp.float32))
    # the scales agree exactly and the integer sums are exact: only the float32 rescale rounds. XLA may fold
    # a4.8's constant 1/√Qp into mean|x|'s 1/n (another rounding order): ≤ 2 float32 ulps. One wrong code
    # would move a sum by ≥ 1 of |Σ| ≤ 127·96, a relative change ≥ 8e-5.
    if dt == jnp.float32:
        np.testing.assert_allclose(got, ref, rtol=2.5e-7, atol=0)
    else:
        np.testing.assert_array_equal(got, ref.astype(dt).astype(np.float32))
    # the fake-quant layer computes the same product up to its float accumulation (and bf16 x̃, W̃)
    tol = 1e-5 if dt == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(fake(x).astype(jnp.float32)), ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_forward_runs_an_int8_dot_with_int32_accumulation():
    _, int8 = layer_pair(B158, jnp.bfloat16)
    x = jnp.asarray(rand((2, 5, 96), 2)).astype(jnp.bfloat16)
    hlo = jax.jit(lambda x: int8(x)).lower(x).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line and "=" in line]
    assert len(dots) == 1, dots
    assert "xi8>" in dots[0] and "xi32>" in dots[0].split("->")[-1], dots[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SPECS)
def test_gradients_equal_the_fake_quant_paths_bit_for_bit(name, dtype):
    spec, dt = SPECS[name], DTYPES[dtype]
    fake, int8 = layer_pair(spec, dt)
    x = jnp.asarray(rand((3, 7, 96), 3))
    cotangent = jnp.asarray(rand((3, 7, 40), 4)).astype(dt)  # the same upstream gradient for both

    def grads(layer):
        graphdef, params = nnx.split(layer)
        f = lambda params, x: nnx.merge(graphdef, params)(x.astype(dt))
        return jax.jit(lambda p, x: jax.vjp(f, p, x)[1](cotangent))(params, x)

    (gp0, gx0), (gp1, gx1) = grads(fake), grads(int8)
    np.testing.assert_array_equal(np.asarray(gx1), np.asarray(gx0))
    np.testing.assert_array_equal(np.asarray(gp1["kernel"][...]), np.asarray(gp0["kernel"][...]))
    assert gp1["kernel"][...].dtype == jnp.float32 and np.abs(np.asarray(gx1)).max() > 0


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec("fbi"),
        QuantSpec("ternary_absmean"),
        QuantSpec("rtn4", "absmax8"),
        QuantSpec("ternary_absmean", "absmax16"),
        QuantSpec("ternary_absmean", "absmax8", weight_options=(("granularity", 32),)),
        QuantSpec("binary_mean", "absmax_v1_8", norm="layer"),
        QuantSpec(),
    ],
)
def test_layer_refuses_specs_without_int8_codes(spec):
    with pytest.raises(
        ValueError,
        match=r"int8 matmul needs integer-coded quantizers \(act absmax<b>, topk_absmax<b>, absmean<b> with b ≤ 8; "
        r"weight ternary_absmean with granularity 'tensor' or 'channel'\)",
    ):
        BitDense(64, 32, quant=spec, int8_matmul=True, rngs=nnx.Rngs(0))


def tiny_config(method="b158", **kw):
    c = T.default_config()
    c.update(dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48, **kw))
    c.quant.method = method
    return c


@pytest.mark.parametrize("method", ["fp", "fbi", "bitnet", "onebit", "pb_llm", "rtn4"])
def test_config_names_the_field_and_the_method(method):
    with pytest.raises(ValueError, match=rf"config\.model\.int8_matmul=True is invalid for quant\.method='{method}'"):
        T.validate_config(tiny_config(method, int8_matmul=True))


def test_stored_config_without_the_field_loads_with_it_off():
    saved = config_lib.trainer_config().to_dict()
    saved["model"] = tiny_config().to_dict()
    del saved["model"]["int8_matmul"]
    loaded = config_lib.with_defaults(saved)
    assert loaded.model.int8_matmul is False
    T.validate_config(loaded.model)


@pytest.mark.parametrize("method", ["b158", "a48"])
def test_option_reaches_every_quantized_projection(method):
    tokens = jnp.zeros((1, 6), jnp.int32)
    for on in (False, True):
        model = T.Transformer(tiny_config(method, int8_matmul=on, dtype="bfloat16"), rngs=nnx.Rngs(0))
        hlo = jax.jit(lambda t, model=model: model(t)).lower(tokens).as_text()
        int_dots = [line for line in hlo.splitlines() if "dot_general" in line and "xi8>" in line]
        assert len(int_dots) == (7 * 2 if on else 0)  # 7 projections × 2 layers; lm_head stays fp


@pytest.mark.slow
def test_tiny_training_run_has_the_same_loss_curve():
    start = np.random.default_rng(0).integers(0, 61, (6, 4, 1))
    data = (start + 3 * np.arange(17)) % 61  # learnable: each token is the previous + 3

    def curve(on):
        model = T.Transformer(tiny_config(int8_matmul=on, dtype="bfloat16"), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        tx = optax.adamw(1e-2)
        opt = tx.init(params)

        @jax.jit
        def step(params, opt, batch):
            def loss_fn(p):
                logits = nnx.merge(graphdef, p)(batch[:, :-1])
                return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

            loss, g = jax.value_and_grad(loss_fn)(params)
            upd, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, upd), opt, loss

        losses = []
        for batch in data:
            params, opt, loss = step(params, opt, jnp.asarray(batch, jnp.int32))
            losses.append(float(loss))
        return np.array(losses)

    fake, int8 = curve(False), curve(True)
    assert fake[-1] < fake[0] - 0.05  # it trains
    # bf16 compute: the int8 forward is exact where the fake-quant one rounds x̃, W̃ to bf16, so the
    # curves drift apart by that rounding only
    np.testing.assert_allclose(int8, fake, rtol=1e-3)
