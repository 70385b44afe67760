"""generate(): greedy = step-by-step argmax of the full model, determinism, sampling options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.eval.sample import generate, sample_logits
from bitjax.models import transformer as T

V = 61


@pytest.fixture(scope="module")
def model():
    c = T.default_config()
    c.update(dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48))
    c.quant.method = "b158"
    return T.Transformer(c, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def prompt():
    return jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 5)), jnp.int32)


def test_greedy_matches_manual_argmax_loop(model, prompt):
    out = generate(model, prompt, 3, temperature=0)
    assert out.shape == (2, 8) and out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out[:, :5]), np.asarray(prompt))
    seq = prompt
    for _ in range(3):  # re-run the whole model on the growing sequence
        nxt = jnp.argmax(nnx.jit(lambda m, x: m(x))(model, seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(seq))
    np.testing.assert_array_equal(
        np.asarray(generate(model, prompt, 3, temperature=0, rng=jax.random.key(9))), np.asarray(out)
    )  # greedy ignores rng


def test_sampling_deterministic_per_rng_and_in_range(model, prompt):
    a = generate(model, prompt, 6, rng=jax.random.key(1), temperature=1.0, top_k=10)
    b = generate(model, prompt, 6, rng=jax.random.key(1), temperature=1.0, top_k=10)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ((np.asarray(a) >= 0) & (np.asarray(a) < V)).all()
    top1 = generate(model, prompt, 3, rng=jax.random.key(2), temperature=0.7, top_k=1)
    np.testing.assert_array_equal(np.asarray(top1), np.asarray(generate(model, prompt, 3, temperature=0)))


def test_sample_logits_top_k():
    logits = jnp.asarray([[0.0, 5.0, 4.0, -1.0]] * 64)
    toks = np.asarray(sample_logits(logits, jax.random.key(0), temperature=5.0, top_k=2))
    assert set(toks.tolist()) == {1, 2}


def test_edge_cases(model, prompt):
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 0, temperature=0)), np.asarray(prompt))
    with pytest.raises(ValueError, match="rng"):
        generate(model, prompt, 2, temperature=1.0)
    with pytest.raises(ValueError, match=r"int32\[B, P\]"):
        generate(model, prompt[0], 2, temperature=0)
