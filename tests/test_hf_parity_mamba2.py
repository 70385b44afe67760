"""bitjax Mamba-2 vs HF transformers' Mamba2ForCausalLM in real torch (its torch path: no mamba_ssm /
causal_conv1d kernels on CPU, so HF runs its reference torch_forward), logits to float32 round-off.

Needs torch and transformers (skipped without them), like tests/test_hf_parity.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bitjax.export.hf import hf_config, hf_quantized, hf_state_dict, to_hf_model
from bitjax.models import mamba2 as M

pytestmark = pytest.mark.slow
V = 97


def model_pair(**kw):
    cfg = M.default_config()
    cfg.update(dict(vocab_size=V, d_model=32, n_layers=2, d_state=8, headdim=16, chunk_size=8, **kw))
    ours = M.Mamba2LM(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    for path, var in nnx.to_flat_state(nnx.state(ours, nnx.Param)):
        if path[-1] in ("scale", "D"):  # non-unit gains and skips: a norm or skip in the wrong place would show
            var.set_value(jnp.asarray(1 + 0.3 * rng.standard_normal(var.get_value().shape), jnp.float32))
    return cfg, ours, to_hf_model(ours, cfg)


@pytest.mark.parametrize(
    "kw, length",
    [
        (dict(ngroups=1), 16),  # a whole number of chunks
        (dict(ngroups=2), 21),  # groups; 21 is not a multiple of chunk_size 8
        (dict(ngroups=2, tie_embeddings=False, d_conv=3), 5),  # an untied lm_head; shorter than one chunk
    ],
)
def test_logits_match_hf_mamba2(kw, length):
    cfg, ours, hf = model_pair(**kw)
    assert type(hf).__name__ == "Mamba2ForCausalLM"
    mixer = hf.backbone.layers[0].mixer
    assert mixer.n_groups == cfg.ngroups and mixer.chunk_size == 8 and mixer.conv1d.weight.shape[1:] == (1, cfg.d_conv)
    tokens = np.random.default_rng(3).integers(0, V, (2, length))
    mine = np.asarray(ours(jnp.asarray(tokens, jnp.int32)))
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(ref).mean() > 0.05  # logits of a real size, so the tolerance below means something
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-5)


def test_state_dict_names_and_layouts_are_hf_s():
    cfg, ours, hf = model_pair(ngroups=2)
    state = hf_state_dict(ours)
    theirs = hf.state_dict()
    assert set(state) == set(theirs) - {"lm_head.weight"}  # tied: HF's lm_head.weight is the embedding
    for k, v in state.items():
        assert tuple(theirs[k].shape) == v.shape, k
    assert state["backbone.layers.0.mixer.conv1d.weight"].shape == (M.dims(cfg)["conv"], 1, 4)
    assert hf_config(cfg)[1]["num_heads"] == 4


def test_quantized_mamba2_has_no_hf_twin():
    cfg = M.default_config()
    assert hf_quantized(cfg) is False
    cfg.quant.method = "bimamba"
    with pytest.raises(ValueError, match="Mamba2ForCausalLM is full precision"):
        hf_quantized(cfg)


def test_saved_checkpoint_loads_in_hf_with_the_same_logits(tmp_path):
    """save_hf (python -m bitjax.export --format hf) of an fp run: Mamba2ForCausalLM.from_pretrained reproduces it."""
    from bitjax.export.hf import save_hf

    cfg, ours, _ = model_pair(ngroups=2)
    info = save_hf(ours, cfg, str(tmp_path), token_ids={"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2})
    assert info["architecture"] == "Mamba2ForCausalLM"
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(hf).__name__ == "Mamba2ForCausalLM"
    tokens = np.random.default_rng(4).integers(0, V, (1, 11))
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.float().numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens, jnp.int32))), ref, rtol=0, atol=1e-5)
