"""bitjax transformer ↔ HF transformers (Llama / BitNet): names, layout and config, unpacked.

    arch, hf_cfg = hf_config(config.model)      # 'LlamaForCausalLM' | 'BitNetForCausalLM', config kwargs
    state = hf_state_dict(model)                # {HF name: numpy array}, latent (unquantized) weights

`hf_state_dict` maps every parameter through `bitjax.models.transformer.hf_param_names` and transposes
kernels to torch's (out, in). Loaded into HF's BitNetForCausalLM with AutoBitLinear in online mode (or
LlamaForCausalLM for `fp`), it reproduces bitjax's logits (tests/test_hf_parity.py). Packed 1/1.6/2-bit
export builds on this.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from bitjax.models.transformer import ROLES, hf_param_names, quant_table
from bitjax.quant.registry import QuantSpec


def hf_state_dict(model) -> dict[str, np.ndarray]:
    """{HF state-dict name: float32 array} of a Transformer's parameters (kernels transposed)."""
    names = hf_param_names(model)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var.get_value())
        if path[-1] == "kernel":
            value = value.T  # (in, out) → (out, in)
        out[names[".".join(map(str, path))]] = np.ascontiguousarray(value)
    return out


def hf_config(cfg) -> tuple[str, dict]:
    """(HF architecture, config kwargs) for config.model: BitNet when it has sub-norms, else Llama.

    BitNetForCausalLM always has attn_sub_norm/ffn_sub_norm and Llama never does, so `sub_norm`
    decides. Quantization (BitNetQuantConfig) is not part of this dict.
    """
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    if cfg.sub_norm and head_dim * cfg.n_heads != cfg.d_model:
        raise ValueError("HF BitNet's attn_sub_norm has hidden_size features: it needs "
                         "n_heads · head_dim == d_model")
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_kv_heads, head_dim=head_dim, hidden_act=cfg.activation,
                  rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                  rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
                  attention_bias=False)
    return ("BitNetForCausalLM" if cfg.sub_norm else "LlamaForCausalLM"), kwargs


def hf_quantized(cfg) -> bool:
    """Whether config.model is b1.58 as HF runs it (True), full precision (False), or neither (error).

    HF's BitNet quantizes every projection with per-tensor ternary absmean weights and per-token int8
    absmax activations, no in-layer norm, embeddings and lm_head full precision: b1.58 exactly.
    The gradient rule does not change the forward, so it is ignored here.
    """
    plain = lambda spec: dataclasses.replace(spec, grad="identity")
    table = {role: plain(spec) for role, spec in quant_table(cfg).items()}
    if all(spec.is_fp for spec in table.values()):
        return False
    b158 = QuantSpec("ternary_absmean", "absmax8")
    if all(table[r] == (QuantSpec() if r in ("embed", "lm_head") else b158) for r in ROLES):
        return True
    recipe = "; ".join(f"{r}: {s}" for r, s in table.items())
    raise ValueError(f"config.model.quant (method {cfg.quant.method!r}, rules {cfg.quant.rules!r} → {recipe}) has "
                     "no HF transformers equivalent: HF's BitNet runs b1.58 only (quant.method='b158' with no "
                     "rules), or use 'fp'")


def to_hf_model(model, cfg):
    """An HF transformers model (torch, float32, eval) holding `model`'s weights; needs torch + transformers.

    `fp` → LlamaForCausalLM (or BitNetForCausalLM with plain Linear when sub_norm); `b158` →
    BitNetForCausalLM whose projections are HF's AutoBitLinear in online mode (ternary WeightQuant and
    int8 ActQuant of the latent weights every call), lm_head full precision: b1.58 as HF runs it. Other
    methods have no HF twin (ValueError, see :func:`hf_quantized`).
    """
    quantized = hf_quantized(cfg)
    import torch
    import transformers
    from transformers.integrations.bitnet import replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    arch, kwargs = hf_config(cfg)
    conf = getattr(transformers, arch.replace("ForCausalLM", "Config"))(bos_token_id=0, eos_token_id=1, **kwargs)
    conf._attn_implementation = "eager"
    hf = getattr(transformers, arch)(conf)
    if quantized:
        replace_with_bitnet_linear(hf, modules_to_not_convert=["lm_head"], quantization_config=BitNetQuantConfig(
            linear_class="autobitlinear", quantization_mode="online"))
    state = {k: torch.tensor(v) for k, v in hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - ({"lm_head.weight"} if cfg.tie_embeddings else set()):
        raise ValueError(f"HF {arch} and the bitjax model disagree: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval().float()
