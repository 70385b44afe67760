"""GGUF export for llama.cpp's bitnet architecture, read back with gguf-py's own GGUFReader and dequantizer."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

gguf = pytest.importorskip("gguf")

from bitjax.data.tokenizers import ByteTokenizer
from bitjax.export.gguf import save_gguf
from bitjax.models import transformer as T
from bitjax.quant.weights import ternary_absmean_codes


def b158(**kw):
    cfg = T.default_config()
    cfg.update(
        {
            **dict(
                vocab_size=384,
                d_model=256,
                n_layers=2,
                n_heads=4,
                n_kv_heads=2,
                mlp_dim=512,
                sub_norm=True,
                tie_embeddings=True,
                rope_theta=500000.0,
            ),
            **kw,
        }
    )
    cfg.quant.method = "b158"
    return cfg, T.Transformer(cfg, rngs=nnx.Rngs(0))


def field(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.parts[i] for i in f.data]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0]


def projections(model):
    """{gguf name: latent kernel (in, out)} of every projection."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name, mod in [
            ("attn_q", layer.self_attn.q_proj),
            ("attn_k", layer.self_attn.k_proj),
            ("attn_v", layer.self_attn.v_proj),
            ("attn_output", layer.self_attn.o_proj),
            ("ffn_gate", layer.mlp.gate_proj),
            ("ffn_up", layer.mlp.up_proj),
            ("ffn_down", layer.mlp.down_proj),
        ]:
            out[f"blk.{i}.{name}.weight"] = np.asarray(mod.kernel[...])
    return out


@pytest.mark.parametrize("gguf_type, bpw", [("tq2_0", 2.0625), ("tq1_0", 1.6875)])
def test_gguf_dequantizes_to_bitjax_wtilde(tmp_path, gguf_type, bpw):
    cfg, model = b158()
    path = str(tmp_path / "m.gguf")
    info = save_gguf(model, cfg, path, gguf_type=gguf_type, tokenizer=ByteTokenizer())
    assert info["fallback_f16"] == [] and info["projection_bits_per_weight"] == bpw
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 + 11 * cfg.n_layers  # token_embd, output_norm; 7 projections + 4 norms per layer
    qtype = getattr(gguf.GGMLQuantizationType, gguf_type.upper())
    for name, kernel in projections(model).items():
        t = tensors[name]
        assert t.tensor_type == qtype
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(kernel.shape[::-1])
        codes, gamma = ternary_absmean_codes(jnp.asarray(kernel))
        # codes exactly; γ as the block's fp16 scale (every block's max |W̃| is γ)
        want = np.asarray(codes, np.float32).T * np.float32(np.float16(np.asarray(gamma).reshape(())))
        np.testing.assert_array_equal(got, want)
        assert np.abs(np.asarray(codes)).sum() > 0
    emb = tensors["token_embd.weight"]
    np.testing.assert_array_equal(np.asarray(emb.data).reshape(384, 256), np.asarray(model.embed_tokens.embedding[...]))
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.1.ffn_sub_norm.weight"].data), np.asarray(model.layers[1].mlp.ffn_sub_norm.scale[...])
    )
    assert "output.weight" not in tensors  # llama.cpp's bitnet head is token_embd (tied)


def test_gguf_metadata_is_complete_for_llama_cpp(tmp_path):
    cfg, model = b158()
    path = str(tmp_path / "m.gguf")
    save_gguf(model, cfg, path, tokenizer=ByteTokenizer())
    r = gguf.GGUFReader(path)
    assert field(r, "general.architecture") == "bitnet"
    want = {
        "bitnet.embedding_length": 256,
        "bitnet.block_count": 2,
        "bitnet.feed_forward_length": 512,
        "bitnet.attention.head_count": 4,
        "bitnet.attention.head_count_kv": 2,
        "bitnet.rope.dimension_count": 64,
        "bitnet.attention.key_length": 64,
        "bitnet.vocab_size": 384,
        "bitnet.context_length": 2048,
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_TQ2_0),
        "tokenizer.ggml.bos_token_id": 257,
        "tokenizer.ggml.eos_token_id": 258,
        "tokenizer.ggml.padding_token_id": 256,
    }
    for k, v in want.items():
        assert field(r, k) == v, k
    assert field(r, "bitnet.rope.freq_base") == 500000.0
    np.testing.assert_allclose(field(r, "bitnet.attention.layer_norm_rms_epsilon"), 1e-5, rtol=1e-6)
    assert field(r, "tokenizer.ggml.model") == "llama"
    tokens = [bytes(t).decode() for t in field(r, "tokenizer.ggml.tokens")]
    types = [int(t[0]) for t in field(r, "tokenizer.ggml.token_type")]
    assert len(tokens) == len(types) == 384 and len(field(r, "tokenizer.ggml.scores")) == 384
    assert tokens[ord("a")] == "a" and tokens[32] == "\u2581" and tokens[10] == "<0x0A>" and tokens[0xC3] == "<0xC3>"
    assert types[10] == gguf.TokenType.BYTE and types[257] == gguf.TokenType.CONTROL and tokens[258] == "</s>"


def test_rows_without_whole_blocks_fall_back_to_f16(tmp_path):
    cfg, model = b158(d_model=64, mlp_dim=512)  # 64-long rows cannot hold 256-blocks; down_proj's 512 can
    info = save_gguf(model, cfg, str(tmp_path / "m.gguf"), tokenizer=ByteTokenizer())
    assert "blk.0.ffn_down.weight" not in info["fallback_f16"] and "blk.0.attn_q.weight" in info["fallback_f16"]
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
    kernel = np.asarray(model.layers[0].mlp.up_proj.kernel[...])
    codes, gamma = ternary_absmean_codes(jnp.asarray(kernel))
    want = (np.asarray(codes, np.float32) * np.asarray(gamma)).T.astype(np.float16)
    np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)


@pytest.mark.parametrize(
    "kw, flag", [(dict(activation="relu2"), "activation=silu"), (dict(tie_embeddings=False), "tie_embeddings=True")]
)
def test_models_llama_cpp_cannot_run_are_refused(tmp_path, kw, flag):
    cfg, model = b158(**kw)
    with pytest.raises(ValueError, match=flag):
        save_gguf(model, cfg, str(tmp_path / "m.gguf"), tokenizer=ByteTokenizer())


def test_llama_cpp_loads_and_generates(tmp_path):
    """Runs only where llama-cpp-python is installed (not on the 2-core CI machine: building it takes ~20 min)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cfg, model = b158()
    path = str(tmp_path / "m.gguf")
    save_gguf(model, cfg, path, tokenizer=ByteTokenizer())
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, verbose=False)
    assert llm.tokenize(b"def f", add_bos=False) == list(b"def f")
    out = llm("def ", max_tokens=8, temperature=0)
    assert out["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_cli_exports_a_trained_run(tmp_path, data_dir):
    """python -m bitjax.export --format gguf on a workdir (3 training steps: the path, not the quality)."""
    from builders import tiny_config

    from bitjax.export import __main__ as export_cli
    from bitjax.train import trainer

    cfg = tiny_config(
        "b158",
        steps=3,
        data_dir=data_dir,
        **{
            "optim.warmup_steps": 0,
            "model.d_model": 256,
            "model.mlp_dim": 512,
            "model.n_layers": 1,
            "model.sub_norm": True,
            "model.tie_embeddings": True,
        },
    )
    trainer.train(cfg, str(tmp_path / "run"))
    info = export_cli.main(
        [
            "--workdir",
            str(tmp_path / "run"),
            "--format",
            "gguf",
            "--out",
            str(tmp_path / "m.gguf"),
            "--gguf_type",
            "tq1_0",
        ]
    )
    assert info["fallback_f16"] == [] and info["projection_bits_per_weight"] == 1.6875
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert field(r, "bitnet.vocab_size") == 384 and field(r, "bitnet.block_count") == 1
    assert {t.tensor_type for t in r.tensors if t.name.endswith("ffn_up.weight")} == {gguf.GGMLQuantizationType.TQ1_0}


# ---------------------------------------------------------------------------- fp runs: llama architecture
def fp_llama(tie=True, vocab=384):
    cfg = T.default_config()
    cfg.update(dict(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128, tie_embeddings=tie))
    return cfg, T.Transformer(cfg, rngs=nnx.Rngs(3))


def q8_0_reference(x):
    """ggml's Q8_0 restated (ggml-quants.c quantize_row_q8_0_ref): blocks of 32 along a row, d = max|x|/127,
    q = roundf(x·(1/d)) (half away from zero, int8), d stored as fp16: x ≈ q·fp16(d)."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(-1, keepdims=True) / np.float32(127)
    r = b * np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
    q = np.trunc(r + np.copysign(0.5, r))
    return (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape)


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_fp_run_exports_as_llama_and_reads_back(tmp_path, gguf_type):
    from bitjax.export.hf import hf_state_dict

    cfg, model = fp_llama(tie=gguf_type != "f16")
    path = str(tmp_path / "m.gguf")
    info = save_gguf(model, cfg, path, gguf_type=gguf_type, tokenizer=ByteTokenizer())
    r = gguf.GGUFReader(path)
    assert field(r, "general.architecture") == "llama" and field(r, "llama.block_count") == 2
    assert field(r, "llama.attention.head_count_kv") == 2 and field(r, "llama.vocab_size") == 384
    state = hf_state_dict(model)
    got = {t.name: t for t in r.tensors}
    assert ("output.weight" in got) == (gguf_type == "f16")  # untied head only
    for hf_name, want in state.items():
        parts = hf_name.split(".")
        if hf_name == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif hf_name == "lm_head.weight":
            name = "output.weight"
        elif hf_name == "model.norm.weight":
            name = "output_norm.weight"
        else:
            short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
            short.update(gate_proj="ffn_gate", up_proj="ffn_up", down_proj="ffn_down")
            short.update(input_layernorm="attn_norm", post_attention_layernorm="ffn_norm")
            name = f"blk.{parts[2]}.{short[parts[-2]]}.weight"
        if parts[-2] in ("q_proj", "k_proj"):  # llama.cpp's permute: (heads, 2, d/2, in) → (heads, d/2, 2, in)
            h = 4 if parts[-2] == "q_proj" else 2
            want = want.reshape(h, 2, want.shape[0] // h // 2, -1).swapaxes(1, 2).reshape(want.shape)
        t = got[name]
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        if want.ndim == 1 or gguf_type == "f32":
            np.testing.assert_array_equal(back, want)
        elif gguf_type == "f16":
            np.testing.assert_array_equal(back, want.astype(np.float16).astype(np.float32))
        else:
            np.testing.assert_allclose(back, q8_0_reference(want), rtol=0, atol=1e-7)
        assert info["tensors"][name] == ("F32" if want.ndim == 1 else gguf_type.upper())


def test_fp_gguf_loads_in_transformers_with_bitjax_logits(tmp_path):
    """transformers' own GGUF loader (it undoes the q/k permutation itself) on the f32 export."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, model = fp_llama(tie=False)
    save_gguf(model, cfg, str(tmp_path / "m.gguf"), gguf_type="f32", tokenizer=ByteTokenizer())
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32)
    tokens = np.random.default_rng(0).integers(0, 259, (2, 40))
    mine = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    with torch.no_grad():
        ref = hf.eval()(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(mine - ref).max() < 2e-5


def test_hf_byte_level_tokenizer_is_written_as_gpt2_vocab(tmp_path):
    """An HF byte-level BPE run tokenizer → tokenizer.ggml.* (gpt2); transformers' GGUF tokenizer of the
    file encodes as the `tokenizers` library does on the source tokenizer.json."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import builders

    from bitjax.data.tokenizers import HFTokenizer

    src = builders.hf_tokenizer("bytelevel", str(tmp_path / "tok"))
    tok = HFTokenizer(src)
    cfg, model = fp_llama(vocab=512)
    (tmp_path / "g").mkdir()
    save_gguf(model, cfg, str(tmp_path / "g" / "m.gguf"), gguf_type="f32", tokenizer=tok)
    r = gguf.GGUFReader(str(tmp_path / "g" / "m.gguf"))
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt2"
    assert field(r, "tokenizer.ggml.eos_token_id") == tok.eos_id and len(field(r, "tokenizer.ggml.tokens")) == 512
    ref = tokenizers.Tokenizer.from_file(f"{src}/tokenizer.json")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "g"), gguf_file="m.gguf")
    for text in (builders.TEXT, "  two  spaces\tand\r\nlines <|im_end|> end", "ünïcödé ∑ x² 𝔘"):
        assert hf(text, add_special_tokens=False)["input_ids"] == ref.encode(text, add_special_tokens=False).ids
    assert hf.eos_token_id == tok.eos_id and hf.chat_template == "{{ x }}"


def test_fp_gguf_refusals(tmp_path):
    import builders

    from bitjax.data.tokenizers import HFTokenizer

    cfg, model = fp_llama()
    big = HFTokenizer(builders.hf_tokenizer("bytelevel", str(tmp_path / "tok")))  # 400 ids
    with pytest.raises(ValueError, match="400 ids do not fit the model's 384"):
        save_gguf(model, cfg, str(tmp_path / "c.gguf"), tokenizer=big)
    with pytest.raises(ValueError, match="must be one of"):
        save_gguf(model, cfg, str(tmp_path / "a.gguf"), gguf_type="tq2_0", tokenizer=ByteTokenizer())
    cfg.activation = "relu2"
    with pytest.raises(ValueError, match="activation=silu"):
        save_gguf(model, cfg, str(tmp_path / "b.gguf"), tokenizer=ByteTokenizer())


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0"])
def test_bitnet_gguf_imports_back_into_b158(tmp_path, gguf_type):
    """export (bitnet, TQ) → bitjax.import_gguf → load_hf: every projection re-quantizes to the exported codes
    with γ = fp16(γ) of the file (F16-fallback rows included), the rest exact; logits follow."""
    pytest.importorskip("safetensors")
    pytest.importorskip("torch")
    from bitjax.export.hf import load_hf
    from bitjax.import_gguf import gguf_to_hf

    cfg, model = b158(d_model=256, mlp_dim=512, n_layers=1)
    path = str(tmp_path / "m.gguf")
    save_gguf(model, cfg, path, gguf_type=gguf_type, tokenizer=ByteTokenizer())
    gguf_to_hf(path, str(tmp_path / "hf"))
    back_cfg, back = load_hf(str(tmp_path / "hf"))
    assert back_cfg.quant.method == "b158" and back_cfg.sub_norm and back_cfg.tie_embeddings
    assert back_cfg.activation == "silu" and back_cfg.rope_theta == cfg.rope_theta
    for name, kernel in projections(model).items():
        b = projections(back)[name]
        c0, g0 = ternary_absmean_codes(jnp.asarray(kernel))
        c1, g1 = ternary_absmean_codes(jnp.asarray(b))
        np.testing.assert_array_equal(np.asarray(c1), np.asarray(c0), err_msg=name)
        np.testing.assert_array_equal(
            np.asarray(g1, np.float32), np.asarray(g0).astype(np.float16).astype(np.float32), err_msg=name
        )
    from bitjax.export.hf import hf_state_dict

    sa, sb = hf_state_dict(model), hf_state_dict(back)
    for name in [n for n in sa if "_proj" not in n]:  # embeddings and every norm (sub-norms too): F32, exact
        np.testing.assert_array_equal(sb[name], sa[name], err_msg=name)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 259, (2, 32)), jnp.int32)
    a, b = np.asarray(model(tokens)), np.asarray(back(tokens))
    assert np.abs(a - b).mean() < 2e-3 * np.abs(a).mean() and (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95
