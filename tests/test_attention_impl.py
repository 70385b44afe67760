"""config.model.attention (auto | xla | cudnn): on CPU auto and xla give today's numbers, which equal a
numpy restatement of causal GQA attention."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.models import transformer


def _cfg(attention):
    cfg = transformer.default_config()
    cfg.update(dict(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, attention=attention))
    return cfg


def test_attention_layer_equals_numpy_causal_gqa():
    cfg = _cfg("xla")
    specs = transformer.quant_table(cfg)  # fp: every projection a plain matmul
    attn = transformer.Attention(cfg, specs, jnp.float32, rngs=nnx.Rngs(params=0))
    x = np.random.default_rng(0).normal(size=(2, 6, 32)).astype(np.float32)
    cos, sin = np.ones((6, 8), np.float32), np.zeros((6, 8), np.float32)  # RoPE off: rotation by 0
    got, _ = attn(jnp.asarray(x), jnp.asarray(cos), jnp.asarray(sin))
    k_ = lambda m: np.asarray(m.kernel[...])
    q = (x @ k_(attn.q_proj)).reshape(2, 6, 4, 8)
    k = (x @ k_(attn.k_proj)).reshape(2, 6, 2, 8).repeat(2, axis=2)  # GQA: query heads 2g, 2g+1 read kv head g
    v = (x @ k_(attn.v_proj)).reshape(2, 6, 2, 8).repeat(2, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(8)
    s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", p, v).reshape(2, 6, 32)
    np.testing.assert_allclose(np.asarray(got), o @ k_(attn.o_proj), rtol=1e-5, atol=1e-6)


def test_auto_and_xla_give_the_same_logits_on_cpu():
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 259, (2, 16)), jnp.int32)
    out = {a: transformer.Transformer(_cfg(a), rngs=nnx.Rngs(params=0))(tokens) for a in ("auto", "xla")}
    np.testing.assert_array_equal(np.asarray(out["auto"]), np.asarray(out["xla"]))


def test_unknown_attention_is_a_config_error():
    with pytest.raises(ValueError, match=r"config\.model\.attention='flash'"):
        transformer.validate_config(_cfg("flash"))
