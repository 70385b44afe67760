"""A llama-architecture GGUF file as an HF checkpoint directory, for `python -m bitjax.import_hf X.gguf`.

Tensors are dequantized with gguf-py (`gguf.quants.dequantize`: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/
Q6_K and the rest it knows) to float32 and renamed to transformers' Llama names. llama.cpp's converter
permutes the rows of attn_q / attn_k (convert_hf_to_gguf.py LlamaModel.permute: each head's rows
interleaved for its rotate-adjacent RoPE); that permutation is undone here, back to HF's rotate-half
layout. The tokenizer comes from `tokenizer.ggml.*` through transformers' GGUF converter (see
_save_tokenizer).

bitnet-architecture files (what bitjax.export --format gguf writes for b1.58: TQ2_0/TQ1_0 projections,
each block d·codes with d = fp16(γ), or F16 of W̃ where rows hold no whole block) become an online HF
BitNet directory (sub-norms, SiLU, tied head) whose projections are latent weights that b1.58 re-quantizes
to the file's codes with γ = the file's d (bitjax.export.hf.latent_from_codes); no q/k permutation (the
bitnet graph uses NEOX RoPE, HF's rotate-half).
"""

from __future__ import annotations

import json
import os

import numpy as np

from bitjax import errors

# GGUF tensor name (per block: blk.N.<name>) → transformers LlamaForCausalLM name
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BITNET_NAMES = {
    "attn_sub_norm.weight": "self_attn.attn_sub_norm.weight",
    "ffn_sub_norm.weight": "mlp.ffn_sub_norm.weight",
}
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permute: w (n_head·d, in) with each head's rows (2, d/2) → (d/2, 2)
    undone, i.e. reshape(n_head, d/2, 2, in) → swap → reshape(n_head·d, in)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def latent_weight(w: np.ndarray, path: str, name: str) -> np.ndarray:
    """Latent torch-layout (out, in) weights of a dequantized ternary projection W̃ = codes·γ (γ the blocks'
    shared d): codes = W̃/γ, exactly ±1/0 (else the file is not b1.58: refused), then latent_from_codes."""
    from bitjax.export.hf import latent_from_codes

    gamma = float(np.abs(w).max())
    if gamma == 0:
        return np.zeros_like(w)
    codes = w / np.float32(gamma)
    if not np.isin(codes, (-1.0, 0.0, 1.0)).all():
        raise errors.UserError(f"{path}: tensor {name} is not ternary with one scale (not a b1.58 projection)")
    inv = np.float32(1.0) / np.float32(gamma)
    return latent_from_codes(codes.T, inv).T  # latent_from_codes works in kernel (in, out) layout


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    return v.tobytes().decode("utf-8") if f.types and f.types[0].name == "STRING" else v.item()


def gguf_to_hf(path: str, out_dir: str) -> None:
    """Writes `out_dir`/config.json + model.safetensors of the llama GGUF file `path` (float32)."""
    try:
        import gguf
    except ImportError as e:
        raise errors.UserError("importing a .gguf file needs gguf-py: pip install 'bitjax[gguf]'") from e
    import torch
    from safetensors.torch import save_file

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # a file that is not GGUF, or cut short
        raise errors.UserError(f"{path} is not a readable GGUF file ({errors.one_line(e)})") from e
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "bitnet"):
        raise errors.UserError(f"{path}: GGUF architecture {arch!r} is not imported (llama or bitnet)")
    bitnet = arch == "bitnet"
    a = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
    n_head, n_kv = a("attention.head_count"), a("attention.head_count_kv") or a("attention.head_count")
    state = {}
    for t in reader.tensors:
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise errors.UserError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, not dequantizable") from e
        w = np.asarray(w, np.float32).reshape([int(x) for x in reversed(t.shape)])  # ggml ne is reversed
        if t.name in GLOBAL_NAMES:
            name = GLOBAL_NAMES[t.name]
        else:
            parts = t.name.split(".", 2)
            names = {**BLOCK_NAMES, **BITNET_NAMES} if bitnet else BLOCK_NAMES
            if parts[0] != "blk" or parts[2] not in names:
                raise errors.UserError(f"{path}: tensor {t.name} has no place in a {'BitNet' if bitnet else 'Llama'}")
            name = f"model.layers.{parts[1]}.{names[parts[2]]}"
            if bitnet and parts[2].split(".")[0] in PROJECTIONS:
                w = latent_weight(w, path, t.name)
            elif parts[2] == "attn_q.weight" and not bitnet:
                w = unpermute(w, n_head)
            elif parts[2] == "attn_k.weight" and not bitnet:
                w = unpermute(w, n_kv)
        state[name] = torch.from_numpy(np.array(w, np.float32, order="C"))  # a writable copy
    embed = state["model.embed_tokens.weight"]
    head_dim = a("attention.key_length") or embed.shape[1] // n_head
    config = {
        "architectures": ["BitNetForCausalLM" if bitnet else "LlamaForCausalLM"],
        "model_type": arch,
        "vocab_size": int(embed.shape[0]),
        "hidden_size": int(embed.shape[1]),
        "num_hidden_layers": a("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(head_dim),
        "intermediate_size": a("feed_forward_length"),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "max_position_embeddings": a("context_length", 2048),
        "hidden_act": "silu",
        "tie_word_embeddings": "lm_head.weight" not in state,
    }
    if bitnet:
        config["quantization_config"] = dict(
            quant_method="bitnet", linear_class="autobitlinear", quantization_mode="online"
        )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    _save_tokenizer(path, out_dir)


def _save_tokenizer(path: str, out_dir: str) -> None:
    """tokenizer.json + tokenizer_config.json of the file's `tokenizer.ggml.*` (gpt2 BPE or llama
    SentencePiece), rebuilt by transformers' own GGUF tokenizer converter; skipped with a warning where
    it cannot (the import then tokenizes with the config's tokenizer)."""
    import logging

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
        tok.save_pretrained(out_dir)
    except Exception as e:  # noqa: BLE001 - any failure of the optional converter only loses the tokenizer
        logging.getLogger("bitjax").warning("%s: its tokenizer is not imported (%s)", path, errors.one_line(e))
