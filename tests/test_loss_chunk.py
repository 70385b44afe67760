"""config.loss_vocab_chunk: the vocabulary-chunked cross-entropy against a numpy CE (values, gradients),
and the train/eval steps with it against today's full-logits path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.models import transformer
from bitjax.run import plan as plan_lib
from bitjax.train import trainer


def _numpy_ce(a, w, targets, mask):
    """(Σ masked NLL, d/da, d/dw) by hand: z = a·w, nll = logsumexp(z) − z[t], dz = (softmax(z) − onehot)·mask."""
    z = np.einsum("bld,dv->blv", a.astype(np.float64), w.astype(np.float64))
    zmax = z.max(-1, keepdims=True)
    lse = zmax[..., 0] + np.log(np.exp(z - zmax).sum(-1))
    zt = np.take_along_axis(z, targets[..., None], -1)[..., 0]
    total = ((lse - zt) * mask).sum()
    p = np.exp(z - lse[..., None])
    onehot = np.eye(w.shape[1])[targets]
    dz = (p - onehot) * mask[..., None]
    return total, np.einsum("blv,dv->bld", dz, w), np.einsum("bld,blv->dv", a, dz)


@pytest.mark.parametrize("chunk", [1, 16, 37, 64])  # 37 = V (one chunk); 16 and 64 pad the last chunk
def test_chunked_ce_values_and_gradients_equal_numpy(chunk):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 5, 8)).astype(np.float32)
    w = (3 * rng.normal(size=(8, 37))).astype(np.float32)  # large logits: the online max matters
    targets = rng.integers(0, 37, size=(2, 5)).astype(np.int32)
    mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
    want, da_want, dw_want = _numpy_ce(a, w, targets, mask)

    def f(a, w):
        total, count = plan_lib.chunked_cross_entropy(a, w, targets, mask, chunk)
        return total, count

    (total, count), (da, dw) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(a, w)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    assert float(count) == mask.sum()
    np.testing.assert_allclose(np.asarray(da), da_want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), dw_want, rtol=1e-4, atol=1e-5)


def _tiny(**over):
    cfg = transformer.default_config()
    cfg.update(dict(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64))
    cfg.quant.method = "b158"
    for k, v in over.items():
        *parents, leaf = k.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


@pytest.mark.parametrize(
    "over",
    [
        {},  # fp lm_head, float32
        {"tie_embeddings": True, "quant.rules": "lm_head: weight=ternary_absmean, act=absmax8"},
        {"quant.rules": "lm_head: weight=ternary_absmean, act=absmax8, norm=rms", "dtype": "bfloat16"},
    ],
)
def test_model_loss_chunked_equals_full_logits(over):
    model = transformer.Transformer(_tiny(**over), rngs=nnx.Rngs(params=0))
    rng = np.random.default_rng(1)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, 259, (2, 16)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, 259, (2, 16)), jnp.int32),
        "mask": jnp.ones((2, 16), jnp.float32),
    }
    graphdef, params = nnx.split(model)

    def loss(params, chunk):
        total, count = plan_lib.loss_sums(nnx.merge(graphdef, params), batch, chunk)
        return total / count

    full, g_full = jax.value_and_grad(loss)(params, 0)
    part, g_part = jax.value_and_grad(loss)(params, 128)  # 300 → 3 chunks, the last padded
    np.testing.assert_allclose(float(part), float(full), rtol=2e-6)
    bf16 = over.get("dtype") == "bfloat16"  # bf16 cotangents: the two orders of rounding differ by ~1 ulp
    for x, y in zip(jax.tree.leaves(g_part), jax.tree.leaves(g_full)):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        atol = 2e-2 * np.abs(y).max() if bf16 else 1e-6
        np.testing.assert_allclose(x, y, rtol=3e-2 if bf16 else 1e-3, atol=atol)


def test_train_and_eval_steps_with_chunks_match_today(make_config):
    cfg0 = make_config("b158", steps=8)
    cfg0.mesh.update(dict(data=1, fsdp=1, tensor=1))
    cfg1 = make_config("b158", steps=8, loss_vocab_chunk=128)
    cfg1.mesh.update(dict(data=1, fsdp=1, tensor=1))
    s0, s1 = trainer.Setup(cfg0, devices=jax.devices()[:1]), trainer.Setup(cfg1, devices=jax.devices()[:1])
    st0, st1 = s0.init_fn(jax.random.key(0)), s1.init_fn(jax.random.key(0))
    batch = s0.train_batch(0)
    np.testing.assert_allclose(
        np.asarray(s1.eval_step(st1["params"], batch)), np.asarray(s0.eval_step(st0["params"], batch)), rtol=1e-6
    )
    for step in range(2):
        st0, m0 = s0.train_step(st0, s0.train_batch(step))
        st1, m1 = s1.train_step(st1, s1.train_batch(step))
        np.testing.assert_allclose(float(m1["train_loss"]), float(m0["train_loss"]), rtol=1e-5)


def test_bad_loss_vocab_chunk_is_a_config_error(make_config):
    from bitjax import errors

    with pytest.raises(errors.UserError, match="loss_vocab_chunk"):
        trainer.Setup(make_config("b158", loss_vocab_chunk=-1), devices=jax.devices()[:1])


def test_chunked_loss_and_its_gradient_hold_no_full_logits():
    """No value of shape [B, L, V] in the traced loss + gradient with chunks; the full path has them."""
    model = transformer.Transformer(_tiny(), rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model)
    batch = {"inputs": jnp.zeros((2, 16), jnp.int32), "targets": jnp.zeros((2, 16), jnp.int32)}
    batch["mask"] = jnp.ones((2, 16), jnp.float32)

    def shapes(chunk):
        loss = lambda p: plan_lib.loss_sums(nnx.merge(graphdef, p), batch, chunk)[0]
        out, seen = jax.make_jaxpr(jax.grad(loss))(params), set()

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                seen.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
                for p in eqn.params.values():
                    for sub in p if isinstance(p, (list, tuple)) else [p]:
                        if hasattr(sub, "jaxpr"):
                            walk(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)

        walk(out.jaxpr)
        return seen

    assert (2, 16, 300) in shapes(0)
    chunked = shapes(128)
    assert (2, 16, 300) not in chunked and (2, 16, 128) in chunked
