"""GGUF files for llama.cpp's `bitnet` (b1.58 runs) and `llama` (fp runs) architectures, written with
ggml's own `gguf` package (gguf-py).

    save_gguf(model, config.model, "model.gguf", gguf_type="tq2_0", tokenizer=ByteTokenizer())
    save_gguf(fp_model, config.model, "model.gguf", gguf_type="f16", tokenizer=tokenizer)   # f32|f16|q8_0

fp (`llama`): every matrix F32, F16 or Q8_0 (blocks of 32 with an fp16 scale max|x|/127, gguf.quants),
norms F32, an untied head as `output.weight`; attn_q/attn_k rows permuted as llama.cpp's converter does
(convert_hf_to_gguf.py LlamaModel.permute: each head's rotate-half rows interleaved for its adjacent-pair
RoPE), which transformers' GGUF loader and bitjax.import_gguf undo. Vocabulary: bitjax's byte tokenizer
as a `llama` (SentencePiece) one with byte tokens (add_byte_vocab), an HF byte-level BPE tokenizer as
`gpt2` (add_hf_vocab: its pieces, merges, specials and chat template).

Projections are ternary blocks of 256 weights along a row of torch's (out, in) weight (llama.cpp's ne0 =
in), each block with one fp16 scale d = max|block|: TQ2_0 packs 4 codes per byte (66 bytes per block,
2.0625 bits/weight), TQ1_0 5 trits per byte plus 4 in a trailing pack (54 bytes, 1.6875 bits/weight).
For b1.58's W̃ = codes·γ every block's max is γ (or the block is all zero), so the codes come through
exactly and each block's d is fp16(γ): the file dequantizes to W̃ up to the fp16 rounding of γ. The
blocks are made by `gguf.quants.quantize` itself (the reference packing of gguf-py).

llama.cpp's `bitnet` graph (src/models/bitnet.cpp) fixes what can be exported: BitNet's sub-norms,
SiLU gated MLP (LLM_FFN_SILU, hard-coded: the graph reads no activation key and gguf-py 0.19 has none, so a
relu² model would run with the wrong one; relu² BitNets such as 2B4T run in microsoft/BitNet's fork under
its `bitnet-b1.58`/`bitnet-25` architectures, not targeted here), a tied output head
(it multiplies by token_embd), NEOX RoPE (HF's rotate_half, bitjax's), RMSNorm. Those are checked here
and anything else is refused. llama.cpp quantizes activations its own way (per block of 256, q8_K), not
b1.58's per-token int8 absmax, so its logits approximate bitjax's rather than equal them.
Rows whose length is not a multiple of 256 cannot hold TQ blocks: such a projection is written as F16 of
W̃ (llama.cpp's own converter falls back the same way), which the result reports.
"""

from __future__ import annotations

import numpy as np

from bitjax.export.hf import hf_config, hf_quantized, hf_state_dict, require
from bitjax.models.transformer import PROJECTIONS

BLOCK = 256  # QK_K
GGUF_TYPES = ("tq2_0", "tq1_0")  # b1.58 runs (bitnet)
FP_GGUF_TYPES = ("f32", "f16", "q8_0")  # fp runs (llama)
# HF name suffix → gguf MODEL_TENSOR member name
_TENSORS = {
    "self_attn.q_proj": "ATTN_Q",
    "self_attn.k_proj": "ATTN_K",
    "self_attn.v_proj": "ATTN_V",
    "self_attn.o_proj": "ATTN_OUT",
    "mlp.gate_proj": "FFN_GATE",
    "mlp.up_proj": "FFN_UP",
    "mlp.down_proj": "FFN_DOWN",
    "input_layernorm": "ATTN_NORM",
    "post_attention_layernorm": "FFN_NORM",
    "self_attn.attn_sub_norm": "ATTN_SUB_NORM",
    "mlp.ffn_sub_norm": "FFN_SUB_NORM",
}
Q8_BLOCK = 32  # weights per Q8_0 block


def gguf_name(hf_name: str) -> str:
    """HF state-dict name → llama.cpp tensor name ('model.layers.3.mlp.up_proj.weight' → 'blk.3.ffn_up.weight')."""
    gguf = require("gguf", "gguf")
    T = gguf.MODEL_TENSOR
    if hf_name == "model.embed_tokens.weight":
        return gguf.TENSOR_NAMES[T.TOKEN_EMBD] + ".weight"
    if hf_name == "model.norm.weight":
        return gguf.TENSOR_NAMES[T.OUTPUT_NORM] + ".weight"
    if hf_name == "lm_head.weight":
        return gguf.TENSOR_NAMES[T.OUTPUT] + ".weight"
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        key = ".".join(parts[3:-1])
        if key in _TENSORS:
            return gguf.TENSOR_NAMES[getattr(T, _TENSORS[key])].format(bid=int(parts[2])) + ".weight"
    raise ValueError(f"{hf_name} has no place in llama.cpp's bitnet architecture")


def wtilde_torch(kernel) -> np.ndarray:
    """b1.58's W̃ = codes·γ in torch orientation (out, in), float32, from a latent kernel (in, out)."""
    import jax.numpy as jnp

    from bitjax.quant.weights import ternary_absmean_codes

    codes, gamma = ternary_absmean_codes(jnp.asarray(kernel))
    return (np.asarray(codes, np.float32) * np.asarray(gamma, np.float32)).T.copy()


def add_byte_vocab(writer, tokenizer, vocab_size: int) -> None:
    """bitjax's byte tokenizer as a llama.cpp SentencePiece ('llama') vocabulary, ids unchanged.

    ids 0..255 are bytes: printable ASCII as their character, the space as SentencePiece's '▁' (llama.cpp
    maps ' ' to '▁' before lookup), every other byte as '<0xNN>' of type BYTE (byte fallback covers
    control bytes and UTF-8 beyond ASCII). pad/bos/eos are CONTROL tokens; ids up to vocab_size (the
    model's padded vocabulary) are UNUSED. No merges exist, so text tokenizes to its bytes, as in bitjax.
    """
    gguf = require("gguf", "gguf")
    TT = gguf.TokenType
    tokens, types = [], []
    for b in range(256):
        if b == 0x20:
            tokens.append("\u2581"), types.append(TT.NORMAL)
        elif 0x21 <= b <= 0x7E:
            tokens.append(chr(b)), types.append(TT.NORMAL)
        else:
            tokens.append(f"<0x{b:02X}>"), types.append(TT.BYTE)
    specials = {tokenizer.pad_id: "<pad>", tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>"}
    for i in range(256, vocab_size):
        tokens.append(specials.get(i, f"<unused{i}>"))
        types.append(TT.CONTROL if i in specials else TT.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(int(tokenizer.bos_id))
    writer.add_eos_token_id(int(tokenizer.eos_id))
    writer.add_pad_token_id(int(tokenizer.pad_id))
    writer.add_add_bos_token(False)  # bitjax adds no specials when it encodes
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute) of w (n_head·d, in):
    reshape(n_head, 2, d/2, in) → swap axes 1, 2 → reshape back (rotate-half → interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pre_tokenizer(spec: dict) -> str:
    """tokenizer.ggml.pre of a byte-level tokenizer.json: 'gpt2' for ByteLevel with GPT-2's own split
    regex (what transformers' GGUF loader rebuilds for it); other splits are refused, not guessed."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    raise ValueError(
        f"GGUF export writes byte-level BPE tokenizers with GPT-2's split (pre_tokenizer ByteLevel); this "
        f"tokenizer's pre_tokenizer is {pre.get('type')!r}"
    )


def add_hf_vocab(writer, tokenizer, vocab_size: int) -> None:
    """An HF byte-level BPE tokenizer (bitjax's data.tokenizer=hf) as a llama.cpp `gpt2` vocabulary.

    Its pieces in id order (added special tokens CONTROL, other added tokens USER_DEFINED, the rest
    NORMAL), then '[PAD<i>]' UNUSED up to the model's padded vocab_size; its merges in rank order; bos/eos/
    pad as bitjax uses them; no BOS/EOS added (bitjax adds none); its chat template when it has one.
    """
    import json

    gguf = require("gguf", "gguf")
    TT = gguf.TokenType
    with open(tokenizer.model_path, encoding="utf-8") as f:
        spec = json.load(f)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise ValueError(
            f"GGUF export writes byte-level BPE HF tokenizers (gpt2 kind); this one is a {model.get('type')!r} "
            "model without a ByteLevel decoder"
        )
    pre = _pre_tokenizer(spec)
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(tokenizer.vocab_size):
        tokens.append(tokenizer._tok.id_to_token(i))
        t = added.get(i)
        types.append(TT.NORMAL if t is None else TT.CONTROL if t.get("special") else TT.USER_DEFINED)
    for i in range(tokenizer.vocab_size, vocab_size):
        tokens.append(f"[PAD{i}]"), types.append(TT.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(int(tokenizer.bos_id))
    writer.add_eos_token_id(int(tokenizer.eos_id))
    writer.add_pad_token_id(int(tokenizer.pad_id))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def add_vocab(writer, tokenizer, vocab_size: int) -> None:
    """The run's tokenizer as the file's vocabulary: byte (llama kind) or an HF byte-level BPE (gpt2 kind)."""
    from bitjax.data import tokenizers as tok_lib

    if isinstance(tokenizer, tok_lib.ByteTokenizer):
        add_byte_vocab(writer, tokenizer, vocab_size)
    elif isinstance(tokenizer, tok_lib.HFTokenizer):
        add_hf_vocab(writer, tokenizer, vocab_size)
    else:
        name = getattr(tokenizer, "name", None)
        raise ValueError(f"GGUF export writes byte and HF byte-level BPE tokenizers; not tokenizer {name!r}")  # noqa: TRY004 (user error)


def save_gguf(model, cfg, path: str, *, gguf_type: str | None = None, tokenizer=None, name: str = "bitjax") -> dict:
    """Write a Transformer as a GGUF file: b1.58 → llama.cpp `bitnet`, fp → `llama`; returns what went where.

    gguf_type: tq2_0 | tq1_0 for b1.58 (default tq2_0), f32 | f16 | q8_0 for fp (default f16).
    Returns {'tensors': {gguf name: type}, 'fallback_f16': [matrices written as F16 for want of whole
    blocks], 'projection_bits_per_weight': payload bits over projection weights}.
    """
    gguf = require("gguf", "gguf")
    quantized = hf_quantized(cfg)
    allowed = GGUF_TYPES if quantized else FP_GGUF_TYPES
    gguf_type = gguf_type or allowed[0 if quantized else 1]
    if gguf_type not in allowed:
        kind = "b1.58" if quantized else "fp"
        raise ValueError(f"gguf_type for a {kind} run must be one of {allowed}, got {gguf_type!r}")
    if tokenizer is None:
        raise ValueError("GGUF export needs the run's tokenizer")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer's {tokenizer.vocab_size} ids do not fit the model's {cfg.vocab_size}")
    if not quantized:
        return _save_llama(model, cfg, path, gguf_type, tokenizer, name)
    kw = hf_config(cfg)[1]
    fix = []
    if not cfg.sub_norm:
        fix.append("--config.model.sub_norm=True (llama.cpp's bitnet has attn_sub_norm/ffn_sub_norm)")
    if cfg.activation != "silu":
        fix.append("--config.model.activation=silu (llama.cpp's bitnet graph runs a SiLU gated MLP)")
    if not cfg.tie_embeddings:
        fix.append("--config.model.tie_embeddings=True (llama.cpp's bitnet multiplies by token_embd)")
    if fix:
        raise ValueError("llama.cpp's bitnet architecture cannot run this model; train with " + "; ".join(fix))
    qtype = {"tq2_0": gguf.GGMLQuantizationType.TQ2_0, "tq1_0": gguf.GGMLQuantizationType.TQ1_0}[gguf_type]
    ftype = {"tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0, "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0}[gguf_type]

    w = _writer(path, gguf.MODEL_ARCH.BITNET, kw, ftype, tokenizer, name)
    kernels = {}  # HF name → latent kernel (in, out), for W̃
    from flax import nnx

    from bitjax import models
    from bitjax.nn.layer_stack import unstack_layers

    model = unstack_layers(model)  # per-layer tensors (blk.N.*) from a scan_layers model too
    names = models.hf_param_names(model)
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        kernels[names[".".join(map(str, p))]] = np.asarray(var.get_value())
    types, fallback, bits, n_proj = {}, [], 0, 0
    for hf_name, value in hf_state_dict(model).items():
        out_name = gguf_name(hf_name)
        if hf_name.rsplit(".", 2)[-2] in PROJECTIONS:
            wt = wtilde_torch(kernels[hf_name])
            n_proj += wt.size
            if wt.shape[1] % BLOCK == 0:
                data = gguf.quants.quantize(wt, qtype)
                w.add_tensor(out_name, data, raw_dtype=qtype)
                types[out_name] = gguf_type.upper()
            else:
                data = wt.astype(np.float16)
                w.add_tensor(out_name, data)
                types[out_name] = "F16"
                fallback.append(out_name)
            bits += 8 * data.nbytes
        else:  # embeddings and norm gains stay float32
            w.add_tensor(out_name, np.ascontiguousarray(value, np.float32))
            types[out_name] = "F32"
    return _finish(w, path, types, fallback, bits, n_proj)


def _writer(path, arch, kw: dict, ftype, tokenizer, name):
    """A GGUFWriter with the architecture's hyperparameters and the vocabulary written."""
    gguf = require("gguf", "gguf")
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    w.add_context_length(2048)  # RoPE has no trained maximum; llama.cpp needs a default context
    w.add_embedding_length(kw["hidden_size"])
    w.add_block_count(kw["num_hidden_layers"])
    w.add_feed_forward_length(kw["intermediate_size"])
    w.add_head_count(kw["num_attention_heads"])
    w.add_head_count_kv(kw["num_key_value_heads"])
    w.add_key_length(kw["head_dim"])
    w.add_value_length(kw["head_dim"])
    w.add_rope_dimension_count(kw["head_dim"])
    w.add_rope_freq_base(kw["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(kw["rms_norm_eps"])
    w.add_vocab_size(kw["vocab_size"])
    w.add_file_type(int(ftype))
    add_vocab(w, tokenizer, kw["vocab_size"])
    return w


def _finish(w, path, types, fallback, bits, n_proj) -> dict:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "path": path,
        "tensors": types,
        "fallback_f16": fallback,
        "projection_bits_per_weight": bits / max(n_proj, 1),
    }


def _save_llama(model, cfg, path: str, gguf_type: str, tokenizer, name: str) -> dict:
    """An fp Transformer as a llama.cpp `llama` GGUF (see the module docstring)."""
    gguf = require("gguf", "gguf")
    arch, kw = hf_config(cfg)
    fix = []
    if arch != "LlamaForCausalLM":
        fix.append("--config.model.sub_norm=False (llama has no attn_sub_norm/ffn_sub_norm)")
    if cfg.activation != "silu":
        fix.append("--config.model.activation=silu (llama.cpp's llama graph runs a SiLU gated MLP)")
    if fix:
        raise ValueError("llama.cpp's llama architecture cannot run this model; train with " + "; ".join(fix))
    Q = gguf.GGMLQuantizationType
    qtype = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[gguf_type]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
        gguf_type, gguf.LlamaFileType.MOSTLY_Q8_0
    )
    w = _writer(path, gguf.MODEL_ARCH.LLAMA, kw, ftype, tokenizer, name)
    types, fallback, bits, n_proj = {}, [], 0, 0
    for hf_name, value in hf_state_dict(model).items():
        out_name = gguf_name(hf_name)
        value = np.ascontiguousarray(value, np.float32)
        if hf_name.endswith("self_attn.q_proj.weight"):
            value = permute(value, kw["num_attention_heads"])
        elif hf_name.endswith("self_attn.k_proj.weight"):
            value = permute(value, kw["num_key_value_heads"])
        kind = "F32" if value.ndim == 1 else gguf_type.upper()
        if kind == "Q8_0" and value.shape[-1] % Q8_BLOCK:
            kind = "F16"
            fallback.append(out_name)
        if kind == "Q8_0":
            data = gguf.quants.quantize(value, qtype)
            w.add_tensor(out_name, data, raw_dtype=qtype)
        else:
            data = value.astype(np.float16) if kind == "F16" else value
            w.add_tensor(out_name, data)
        types[out_name] = kind
        if hf_name.rsplit(".", 2)[-2] in PROJECTIONS:
            bits, n_proj = bits + 8 * data.nbytes, n_proj + value.size
    return _finish(w, path, types, fallback, bits, n_proj)
