"""HF checkpoint files out and in: packed offline BitNet directories that transformers loads, back into bitjax.

Trains a tiny b158 run (sub-norms, relu², tied: the 2B4T layout), exports it with the CLI, loads it with
transformers' own BitNetForCausalLM.from_pretrained (offline, nothing downloaded) and compares logits on
text the run never saw; imports HF directories (ours, and ones built in torch with transformers' own
pack_weights) and checks logits, sampling and fine-tuning from the import.
"""

import json
import os
import sysconfig

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("accelerate")  # transformers' BitNet quantizer refuses to load without it

from builders import tiny_config

from bitjax import errors
from bitjax.data.tokenizers import ByteTokenizer
from bitjax.export import __main__ as export_cli
from bitjax.export.hf import latent_from_codes, load_hf, save_hf
from bitjax.import_hf import import_hf
from bitjax.models import transformer as T
from bitjax.quant.weights import ternary_absmean_codes
from bitjax.run import plan as plan_lib
from bitjax.train import trainer

pytestmark = pytest.mark.slow
os.environ["HF_HUB_OFFLINE"] = "1"
B158_2B4T = {
    "model.sub_norm": True,
    "model.activation": "relu2",
    "model.tie_embeddings": True,
    "model.rope_theta": 500000.0,
}


def held_out_tokens(n=256):
    """n byte tokens of a stdlib file outside the training files (tests/test_trainer.py FILES)."""
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "calendar.py"), "rb") as f:
        text = f.read()[4000 : 4000 + n].decode("utf-8", "replace")
    return ByteTokenizer().encode(text)[None, :n]


def logit_gap(model, hf, tokens):
    mine = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    with torch.no_grad():
        ref = hf(torch.from_numpy(np.asarray(tokens, np.int64))).logits.float().numpy()
    d = np.abs(mine - ref)
    return dict(
        mean=float(d.mean()),
        max=float(d.max()),
        top1=float((mine.argmax(-1) == ref.argmax(-1)).mean()),
        scale=float(np.abs(ref).mean()),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A tiny b158 run in the 2B4T layout, trained 60 steps (train loss ≈ 3.1 from 5.9)."""
    workdir = str(tmp_path_factory.mktemp("b158"))
    cfg = tiny_config("b158", steps=60, data_dir=data_dir, **B158_2B4T)
    trainer.train(cfg, workdir)
    plan, params = plan_lib.restore_one_device(workdir)
    return workdir, plan.model(params), plan.config


@pytest.mark.parametrize("linear_class", ["bitlinear", None])
def test_exported_directory_loads_in_transformers_with_bitjax_logits(trained, tmp_path, linear_class):
    workdir, model, config = trained
    out = str(tmp_path / "hf")
    flags = [] if linear_class is None else ["--linear_class", linear_class]
    info = export_cli.main(["--workdir", workdir, "--format", "hf", "--out", out, *flags])
    # the default is what microsoft/bitnet-b1.58-2B-4T ships: AutoBitLinear, offline (packed), scale γ
    linear_class = linear_class or "autobitlinear"
    with open(os.path.join(out, "config.json")) as f:
        hf_cfg = json.load(f)
    assert hf_cfg["architectures"] == ["BitNetForCausalLM"]
    assert hf_cfg["quantization_config"] == {
        "quant_method": "bitnet",
        "linear_class": linear_class,
        "quantization_mode": "offline",
    }
    from safetensors.numpy import load_file

    state = load_file(os.path.join(out, "model.safetensors"))
    q = state["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == np.uint8 and q.shape == (config.model.d_model // 4, config.model.d_model)
    # the stored scale is γ (autobitlinear) or 1/γ (bitlinear) of bitjax's own quantizer
    kernel = np.asarray(model.layers[0].self_attn.q_proj.kernel[...])
    gamma = float(np.asarray(ternary_absmean_codes(jnp.asarray(kernel))[1]).reshape(()))
    ws = float(state["model.layers.0.self_attn.q_proj.weight_scale"][0])
    np.testing.assert_allclose(ws, 1 / gamma if linear_class == "bitlinear" else gamma, rtol=1e-7)
    assert info["projection_bytes"] * 7.9 <= info["projection_bf16_bytes"]
    # the run's tokenizer comes along: HF's tokenizer of the export gives its bytes
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("déjà  vu\n")["input_ids"] == list("déjà  vu\n".encode()) and hf_tok.eos_token_id == 258
    assert transformers.GenerationConfig.from_pretrained(out).pad_token_id == 256

    hf = transformers.BitNetForCausalLM.from_pretrained(out).eval()
    cls = "BitLinear" if linear_class == "bitlinear" else "AutoBitLinear"
    assert type(hf.model.layers[1].mlp.down_proj).__name__ == cls
    assert type(hf.lm_head).__name__ == "Linear" and hf.dtype == torch.float32
    gap = logit_gap(model, hf, held_out_tokens())
    print(f"trained tiny b158 → HF {cls}, 256 held-out tokens: {gap}")
    assert gap["scale"] > 1.0  # trained logits, so the tolerances below are relative to a real size
    # Float summation order differs between XLA and torch, so an int8 activation code can flip at a
    # rounding tie and move later logits by ~1e-2; most positions agree to float32 round-off.
    assert gap["mean"] < 2e-3 and gap["top1"] >= 0.99, gap


def test_fp_run_exports_as_llama(tmp_path):
    cfg = T.default_config()
    cfg.update(dict(vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128))
    model = T.Transformer(cfg, rngs=nnx.Rngs(1))
    info = save_hf(model, cfg, str(tmp_path))
    assert info["architecture"] == "LlamaForCausalLM"
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    tokens = np.random.default_rng(0).integers(0, 384, (2, 40))
    gap = logit_gap(model, hf, tokens)
    assert gap["max"] < 2e-5, gap
    _, back = load_hf(str(tmp_path))  # and in again, unchanged
    np.testing.assert_array_equal(np.asarray(back(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(tokens))))


def test_b158_without_sub_norm_exports_as_llama_with_bitlinear(tmp_path):
    """HF's BitNet quantizer swaps the Linear layers of any model: Llama + BitLinear = b1.58 without sub-norms."""
    cfg = T.default_config()
    cfg.update(dict(vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128))
    cfg.quant.method = "b158"
    model = T.Transformer(cfg, rngs=nnx.Rngs(2))
    assert save_hf(model, cfg, str(tmp_path), linear_class="bitlinear")["architecture"] == "LlamaForCausalLM"
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(hf.model.layers[0].self_attn.o_proj).__name__ == "BitLinear"
    tokens = np.random.default_rng(0).integers(0, 384, (2, 40))
    assert logit_gap(model, hf, tokens)["max"] < 2e-5
    back_cfg, back = load_hf(str(tmp_path))
    assert back_cfg.quant.method == "b158" and not back_cfg.sub_norm
    assert logit_gap(back, hf, tokens)["max"] < 2e-5


def test_latent_weights_requantize_to_the_packed_codes_and_scale():
    codes = np.random.default_rng(0).choice(np.array([-1, 0, 0, 1], np.int8), (96, 48))
    gamma = 0.0123
    w = latent_from_codes(codes, 1 / gamma)
    c2, g2 = ternary_absmean_codes(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(c2), codes)
    assert 1.0 / jnp.maximum(jnp.mean(jnp.abs(jnp.asarray(w))), 1e-5) == np.float32(1 / gamma)
    np.testing.assert_allclose(float(np.asarray(g2).reshape(())), gamma, rtol=1.2e-7)
    # the naive latent codes·γ keeps the codes but re-quantizes with γ·(fraction non-zero)
    _, g_naive = ternary_absmean_codes(jnp.asarray(codes * np.float32(gamma)))
    assert abs(float(np.asarray(g_naive).reshape(())) - gamma) > 0.2 * gamma


def test_round_trip_import_sample_and_finetune(trained, tmp_path, data_dir):
    workdir, model, _config = trained
    hf_dir, imported = str(tmp_path / "hf"), str(tmp_path / "imported")
    export_cli.main(["--workdir", workdir, "--format", "hf", "--out", hf_dir])
    base = tiny_config("b158", steps=60, data_dir=data_dir)
    import_hf(hf_dir, imported, base)
    from bitjax.sample import main as sample_main

    plan, params = plan_lib.restore_one_device(imported)
    back = plan.model(params)
    # every projection's quantized weight is the original run's (codes equal, γ to float32 round-off)
    for a, b in [(model.layers[i].mlp.down_proj, back.layers[i].mlp.down_proj) for i in range(2)]:
        np.testing.assert_allclose(np.asarray(b.quantized_kernel()), np.asarray(a.quantized_kernel()), rtol=1.2e-7)
    hf = transformers.BitNetForCausalLM.from_pretrained(hf_dir).eval()
    gap = logit_gap(back, hf, held_out_tokens())
    print(f"HF BitLinear checkpoint → bitjax import, 256 held-out tokens: {gap}")
    assert gap["mean"] < 2e-3 and gap["top1"] >= 0.99, gap
    texts = sample_main(["--workdir", imported, "--prompt", "def ", "--tokens", "16", "--temperature", "0"])
    assert len(texts) == 1 and texts[0].startswith("def ")
    # fine-tune a new run from the import: its first loss is the imported model's (≈ 3.2), far below a
    # fresh init's ln(384) ≈ 5.95 (the 3-step fresh run in the log above starts at 5.87)
    ft = tiny_config("b158", steps=2, data_dir=data_dir, init_from=imported, **{"optim.warmup_steps": 0}, **B158_2B4T)
    trainer.train(ft, str(tmp_path / "ft"))
    with open(tmp_path / "ft" / "metrics.jsonl") as f:
        assert json.loads(f.readline())["train_loss"] < np.log(384) - 2.0


def torch_bitnet_dir(tmp_path, mode, dtype=torch.float32):
    """A random tiny HF BitNet saved like a real checkpoint, quantized with transformers' own code:
    'offline' packs WeightQuant's codes with pack_weights (weight_scale = 1/γ, BitLinear), 'online'
    keeps the float weights (AutoBitLinear quantizes them every call). Float tensors stored in `dtype`
    (2B4T ships bfloat16)."""
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    conf = transformers.BitNetConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=257,
        eos_token_id=258,
    )
    torch.manual_seed(0)
    hf = transformers.BitNetForCausalLM(conf)
    state = {}
    for k, v in hf.state_dict().items():
        if k == "lm_head.weight":
            continue
        if k.endswith("norm.weight"):  # non-unit gains, so a misplaced norm would show
            v = 1 + 0.2 * torch.randn_like(v)
        state[k] = v.to(dtype).contiguous()
        if mode == "offline" and k.endswith("_proj.weight"):
            scale = 1.0 / v.abs().mean().clamp(min=1e-5)  # WeightQuant's
            state[k] = pack_weights((v * scale).round().clamp(-1, 1))
            state[k[:-6] + "weight_scale"] = scale.reshape(1).to(dtype)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    d = conf.to_dict()
    d.update(
        architectures=["BitNetForCausalLM"],
        dtype=str(dtype).removeprefix("torch."),
        quantization_config=dict(
            quant_method="bitnet",
            linear_class="bitlinear" if mode == "offline" else "autobitlinear",
            quantization_mode=mode,
        ),
    )
    with open(tmp_path / "config.json", "w") as f:
        json.dump(d, f)
    return str(tmp_path)


@pytest.mark.parametrize(
    "mode, dtype", [("offline", torch.float32), ("online", torch.float32), ("offline", torch.bfloat16)]
)
def test_import_of_a_checkpoint_built_by_transformers(tmp_path, mode, dtype):
    hf_dir = torch_bitnet_dir(tmp_path, mode, dtype)
    cfg, model = load_hf(hf_dir)
    assert cfg.quant.method == "b158" and cfg.sub_norm and cfg.activation == "relu2" and cfg.tie_embeddings
    # bf16 values widen to float32 exactly, so HF run in float32 holds the same numbers as the import
    hf = transformers.BitNetForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(hf.model.layers[0].self_attn.q_proj).__name__ == ("BitLinear" if mode == "offline" else "AutoBitLinear")
    gap = logit_gap(model, hf, np.random.default_rng(1).integers(0, 300, (2, 48)))
    assert gap["max"] < 2e-5, gap


def test_llama_import(tmp_path):
    conf = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(conf).eval()
    hf.save_pretrained(str(tmp_path))
    cfg, model = load_hf(str(tmp_path))
    assert cfg.quant.method == "fp" and not cfg.sub_norm and not cfg.tie_embeddings
    gap = logit_gap(model, hf, np.random.default_rng(2).integers(0, 300, (2, 40)))
    assert gap["max"] < 2e-5, gap


def test_init_from_a_workdir_without_checkpoints_is_refused(tmp_path, data_dir):
    cfg = tiny_config(
        "b158", steps=2, data_dir=data_dir, init_from=str(tmp_path / "nothing"), **{"optim.warmup_steps": 0}
    )
    with pytest.raises(errors.UserError, match=r"config\.init_from=.*holds no checkpoints"):
        trainer.train(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # refused before the workdir is touched


@pytest.mark.parametrize("arch, model_type", [("LlamaForCausalLM", "llama"), ("BitNetForCausalLM", "bitnet")])
def test_missing_config_fields_take_the_architectures_own_defaults(arch, model_type):
    """A config.json without hidden_act / tie_word_embeddings / rms_norm_eps / rope_theta means what
    transformers' config class defaults to (BitNet: relu², untied, 1e-5, 5e5; Llama: SiLU, untied, 1e-6, 1e4)."""
    from bitjax.export.hf import HF_DEFAULTS, model_config_from_hf

    ref = transformers.AutoConfig.for_model(model_type).to_dict()
    ref["rope_theta"] = (ref.get("rope_parameters") or {}).get("rope_theta", ref.get("rope_theta"))
    assert HF_DEFAULTS[arch] == {k: ref[k] for k in HF_DEFAULTS[arch]}
    hf_cfg = dict(
        architectures=[arch],
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    cfg = model_config_from_hf(hf_cfg)
    want = HF_DEFAULTS[arch]
    assert cfg.activation == want["hidden_act"] and cfg.tie_embeddings == want["tie_word_embeddings"]
    assert cfg.norm_eps == want["rms_norm_eps"] and cfg.rope_theta == want["rope_theta"]
