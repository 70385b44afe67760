"""bitjax.ptq's two capture procedures on a tiny random transformer: `block` (BiLLM's run.py, GPTQ without
--true-sequential) takes all four of a block's projection inputs from one pass of the unquantized block;
`sequential` (GPTQ's --true-sequential) takes o_proj's and down_proj's after the earlier projections of
the same block are quantized. Both feed block i the output of the quantized blocks before it."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax import ptq
from bitjax.models import transformer as T
from bitjax.nn import layer_stack
from bitjax.quant.gptq import gptq

TOKENS = np.random.default_rng(0).integers(0, 64, (4, 16)).astype(np.int32)


def tiny_model():
    cfg = T.default_config()
    cfg.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64))
    return layer_stack.unstack_layers(T.Transformer(cfg, rngs=nnx.Rngs(3)))


def block_inputs(layer, x, model):
    """The four projection inputs of `layer` run unquantized on x (q/k/v, o, gate/up, down) and its output:
    the reference's one forward pass with a hook on every projection."""
    cos, sin = T.rope_cos_sin(jnp.arange(x.shape[1]), model.head_dim, model.rope_theta)
    u = layer.input_layernorm(x)
    with ptq.captured(layer.self_attn, "o_proj") as o, ptq.captured(layer.mlp, "down_proj") as d:
        mid = x + layer.self_attn(u, cos, sin)[0]
        u2 = layer.post_attention_layernorm(mid)
        out = mid + layer.mlp(u2)
    return [np.asarray(a) for a in (u, o.inputs, u2, d.inputs)], out


def quantized_with_inputs(monkeypatch, capture):
    """(the quantized model, the input X of each hessian() call in order: per layer q/k/v, o, gate/up, down)."""
    seen, real = [], ptq.hessian
    monkeypatch.setattr(ptq, "hessian", lambda x: (seen.append(np.asarray(x)), real(x))[1])
    model = tiny_model()
    ptq.quantize_model(model, TOKENS, "rtn", 2, None, log=lambda *_: None, capture=capture)
    return model, seen


def test_block_capture_takes_every_input_from_the_unquantized_block(monkeypatch):
    qmodel, seen = quantized_with_inputs(monkeypatch, "block")
    assert len(seen) == 8
    fp = tiny_model()
    x = fp.embed_tokens(jnp.asarray(TOKENS))
    want0, _ = block_inputs(fp.layers[0], x, fp)
    for got, want in zip(seen[:4], want0):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # block 1 runs unquantized on the output of the quantized block 0
    _, x1 = block_inputs(qmodel.layers[0], x, qmodel)
    want1, _ = block_inputs(fp.layers[1], x1, fp)
    for got, want in zip(seen[4:], want1):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # so the Hessian used for o_proj is the unquantized block's
    np.testing.assert_allclose(
        np.asarray(ptq.hessian(jnp.asarray(seen[1]))), np.asarray(ptq.hessian(jnp.asarray(want0[1]))), rtol=1e-5
    )


def test_sequential_capture_sees_the_block_s_quantized_projections(monkeypatch):
    _, seen = quantized_with_inputs(monkeypatch, "sequential")
    fp = tiny_model()
    x = fp.embed_tokens(jnp.asarray(TOKENS))
    want0, _ = block_inputs(fp.layers[0], x, fp)
    np.testing.assert_allclose(seen[0], want0[0], rtol=1e-5, atol=1e-6)  # q/k/v: nothing quantized yet
    for k in (1, 2, 3):  # o, gate/up, down: after q/k/v (and o, gate/up) are on the 2-bit grid
        assert np.abs(seen[k] - want0[k]).max() > 1e-3 * np.abs(want0[k]).max(), k
    # the sequential o_proj input is the attention of the quantized q/k/v: restated from such a layer
    q0 = tiny_model()
    for name in ("q_proj", "k_proj", "v_proj"):
        dense = getattr(q0.layers[0].self_attn, name)
        dense.kernel[...] = ptq.quantize_kernel(dense.kernel[...], jnp.eye(32), "rtn", 2, None)  # rtn ignores H
    got_o, _ = block_inputs(q0.layers[0], x, q0)
    np.testing.assert_allclose(seen[1], got_o[1], rtol=1e-5, atol=1e-6)


def test_gptq_under_block_capture_uses_the_unquantized_block_s_hessian():
    fp = tiny_model()
    want0, _ = block_inputs(fp.layers[0], fp.embed_tokens(jnp.asarray(TOKENS)), fp)
    w = fp.layers[0].self_attn.o_proj.kernel[...]
    want = np.asarray(gptq(w, ptq.hessian(jnp.asarray(want0[1])), 2))
    got = {}
    for capture in ptq.CAPTURES:
        model = tiny_model()
        ptq.quantize_model(model, TOKENS, "gptq", 2, None, log=lambda *_: None, capture=capture)
        got[capture] = np.asarray(model.layers[0].self_attn.o_proj.kernel[...])
    np.testing.assert_allclose(got["block"], want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got["sequential"], want, rtol=1e-5, atol=1e-7)


def test_an_unknown_capture_is_refused():
    with pytest.raises(ValueError, match="capture 'once': one of sequential, block"):
        ptq.quantize_model(tiny_model(), TOKENS, "rtn", 2, None, capture="once")
