"""bitjax vs HF transformers in real torch: the b1.58 quantizers and whole models, logits to float32 round-off.

Needs torch and transformers (not bitjax dependencies; `.ci/run` installs them, `make test` skips this
module without them). HF's own code is the reference here: WeightQuant / ActQuant / AutoBitLinear from
transformers.integrations.bitnet, LlamaForCausalLM and BitNetForCausalLM.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.integrations import bitnet as hf_bitnet

from bitjax.export.hf import to_hf_model
from bitjax.models import transformer as T
from bitjax.quant import absmax_act, ternary_absmean

pytestmark = pytest.mark.slow


def hf_apply(fn, a):
    """An HF autograd Function as HF runs it (its forward is torch.compile'd)."""
    with torch.no_grad():
        return fn.apply(torch.from_numpy(a)).numpy()


@pytest.mark.parametrize("shape", [(256, 512), (1024, 384)])
def test_ternary_absmean_is_hf_weightquant(shape):
    w = (np.random.default_rng(0).standard_normal(shape) * 0.02).astype(np.float32)
    ref = hf_apply(hf_bitnet.WeightQuant, w)
    got = np.asarray(ternary_absmean(jnp.asarray(w)))
    # The codes agree exactly; γ = mean|W| is a float32 sum whose order is each compiler's own
    # (torch.compile's reduction vs XLA's), so the dequantized values may differ in the last ulp.
    np.testing.assert_array_equal(np.sign(got), np.sign(ref))
    np.testing.assert_allclose(got, ref, rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("shape", [(16, 64, 384), (4, 2560)])
def test_absmax_act_is_hf_actquant_bit_for_bit(shape):
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(absmax_act(jnp.asarray(x), 8)), hf_apply(hf_bitnet.ActQuant, x))


def model_pair(method, **kw):
    cfg = T.default_config()
    cfg.update(dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128, **kw))
    cfg.quant.method = method
    ours = T.Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    for path, var in nnx.to_flat_state(nnx.state(ours, nnx.Param)):
        if path[-1] == "scale":  # non-unit norm gains: a norm in the wrong place would show
            var.set_value(jnp.asarray(1 + 0.2 * rng.standard_normal(var.get_value().shape), jnp.float32))
    return ours, to_hf_model(ours, cfg)


@pytest.mark.parametrize(
    "method, arch, kw",
    [
        ("fp", "llama", dict()),
        ("b158", "bitnet", dict(activation="relu2", sub_norm=True, tie_embeddings=True, rope_theta=500000.0)),
    ],
)
def test_whole_model_logits_match_hf(method, arch, kw):
    ours, hf = model_pair(method, **kw)
    assert type(hf).__name__.lower().startswith(arch)
    tokens = np.random.default_rng(3).integers(0, 256, (2, 48))
    mine = np.asarray(ours(jnp.asarray(tokens, jnp.int32)))
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(ref).mean() > 0.05  # logits of a real size, so the tolerance below means something
    np.testing.assert_allclose(mine, ref, rtol=0, atol=2e-5)


def test_quantization_is_what_hf_measures():
    """Guard against a vacuous pass: b158 logits differ from the same weights run unquantized."""
    ours, _ = model_pair("b158", activation="relu2", sub_norm=True, tie_embeddings=True)
    fp, _ = model_pair("fp", activation="relu2", sub_norm=True, tie_embeddings=True)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 48)), jnp.int32)
    assert np.abs(np.asarray(ours(tokens)) - np.asarray(fp(tokens))).max() > 1e-2


def test_methods_hf_does_not_run_are_refused():
    from bitjax.export.hf import hf_quantized

    for method in ("bitnet", "a48", "fbi"):
        with pytest.raises(ValueError, match="HF's BitNet runs b1.58 only"):
            model_pair(method)
    cfg = T.default_config()
    cfg.quant.method = "b158"
    assert hf_quantized(cfg) is True
    cfg.quant.grad = "clipped"  # the gradient rule does not change the forward
    assert hf_quantized(cfg) is True
    for rules in ("*_proj: weight.granularity=channel", "o_proj: act=absmax4", "lm_head: weight=ternary_absmean"):
        cfg.quant.rules = rules
        with pytest.raises(ValueError, match="no HF transformers equivalent"):
            hf_quantized(cfg)
