"""python -m bitjax.import_hf on bad input: one UserError naming it, nothing written (issue 29.4, 29.11).

A tiny random Llama saved by transformers itself is the good source; each test breaks one thing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from bitjax.errors import UserError
from bitjax.import_hf import import_hf

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    """A 1-layer random LlamaForCausalLM written by save_pretrained (vocab covers the byte tokenizer)."""
    conf = transformers.LlamaConfig(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    d = str(tmp_path_factory.mktemp("hf") / "llama")
    transformers.LlamaForCausalLM(conf).save_pretrained(d)
    return d


@pytest.fixture
def src(good_dir, tmp_path):
    d = str(tmp_path / "src")
    shutil.copytree(good_dir, d)
    return d


def edit_config(d, **changes):
    path = os.path.join(d, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(path, "w") as f:
        json.dump(cfg, f)


def st_file(d):
    (name,) = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    return os.path.join(d, name)


def refused(src, workdir, *match):
    """import_hf raises one UserError whose message holds every `match`; nothing written to `workdir`."""
    before = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
    with pytest.raises(UserError) as e:
        import_hf(src, workdir)
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, msg
    after = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
    assert after == before, (before, after)
    return msg


def test_missing_source(tmp_path):
    refused(str(tmp_path / "nope"), str(tmp_path / "w"), "does not exist")


def test_bad_gguf_and_plain_file(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"GGUF" + bytes(16))
    refused(str(p), str(tmp_path / "w"), str(p), "not an HF checkpoint directory or a .gguf file")
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF" + bytes(16))  # cut short after its magic
    refused(str(p), str(tmp_path / "w"), str(p), "not a readable GGUF file")


def test_no_config_json(src, tmp_path):
    os.remove(os.path.join(src, "config.json"))
    refused(src, str(tmp_path / "w"), "no config.json")


def test_bad_json(src, tmp_path):
    with open(os.path.join(src, "config.json"), "w") as f:
        f.write('{"architectures": ["LlamaForCausalLM"], ')
    refused(src, str(tmp_path / "w"), "config.json", "JSON")


def test_unsupported_architecture(src, tmp_path):
    edit_config(src, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    refused(src, str(tmp_path / "w"), "GPT2LMHeadModel")


def test_missing_config_key(src, tmp_path):
    edit_config(src, hidden_size=None)
    refused(src, str(tmp_path / "w"), "hidden_size")


def test_no_safetensors(src, tmp_path):
    os.remove(st_file(src))
    refused(src, str(tmp_path / "w"), "no *.safetensors")


def test_truncated_safetensors(src, tmp_path):
    path = st_file(src)
    with open(path, "rb") as f:
        data = f.read()
    for cut in (len(data) - 100, 20):  # data cut short; header cut short
        with open(path, "wb") as f:
            f.write(data[:cut])
        refused(src, str(tmp_path / "w"), path)


def test_missing_tensor(src, tmp_path):
    path = st_file(src)
    state = safetensors_torch.load_file(path)
    del state["model.layers.0.mlp.up_proj.weight"]
    safetensors_torch.save_file(state, path, metadata={"format": "pt"})
    refused(src, str(tmp_path / "w"), "model.layers.0.mlp.up_proj.weight")


def test_shape_against_config(src, tmp_path):
    edit_config(src, intermediate_size=48)  # the tensors are 64 wide
    refused(src, str(tmp_path / "w"), "mlp", "48)")
    edit_config(src, intermediate_size=64, vocab_size=512)
    refused(src, str(tmp_path / "w"), "embed_tokens", "(384, 32)", "(512, 32)")


def test_existing_run_refused(src, tmp_path):
    w = tmp_path / "w"
    (w / "checkpoints" / "7").mkdir(parents=True)
    refused(src, str(w), "already holds a run")
    assert os.listdir(w / "checkpoints") == ["7"]


def test_live_lock_refused(src, tmp_path):
    """A workdir a live run holds (its LOCK names a live process here): refused, the LOCK kept."""
    w = tmp_path / "w"
    w.mkdir()
    owner = {"host": socket.gethostname(), "pid": os.getppid(), "start": None, "since": "now"}
    (w / "LOCK").write_text(json.dumps(owner))
    refused(src, str(w), "in use by a live run")
    assert json.loads((w / "LOCK").read_text()) == owner


def test_transformers_gguf_config_imports(src, tmp_path):
    """A config as transformers' GGUF loader writes it (no architectures; quantization_config gguf) is
    a plain float Llama: imported, its weights bit-exact, the LOCK released afterwards."""
    from bitjax.run import plan as plan_lib

    edit_config(src, architectures=None, quantization_config={"quant_method": "gguf"})
    w = str(tmp_path / "w")
    cfg = import_hf(src, w)
    assert cfg.model.quant.method == "fp" and cfg.model.mlp_dim == 64
    assert not os.path.exists(os.path.join(w, "LOCK"))
    _, params = plan_lib.restore_one_device(w)
    up = safetensors_torch.load_file(st_file(src))["model.layers.0.mlp.up_proj.weight"].numpy()
    flat = {".".join(map(str, k)): v for k, v in _flatten(params)}
    (kernel,) = [v for k, v in flat.items() if k.endswith("mlp.up_proj.kernel")]
    np.testing.assert_array_equal(np.asarray(kernel), up.T)
    refused(src, w, "already holds a run")  # and a second import into it is refused


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def test_cli_one_line_exit_2(tmp_path):
    missing = str(tmp_path / "nope")
    r = subprocess.run(
        [sys.executable, "-m", "bitjax.import_hf", missing, "--workdir", str(tmp_path / "w")],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and missing in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "w")


def test_directory_tokenizer_kept_or_refused(src, tmp_path):
    """An HF directory's tokenizer.json comes with the import (data.tokenizer=hf, copied into the
    workdir); one that does not load, or whose vocabulary the embedding does not cover, is refused."""
    from test_hf_tokenizer import TEXT, train

    from bitjax.data.tokenizers import HFTokenizer
    from bitjax.run import plan as plan_lib

    tok_dir = train("bytelevel", str(tmp_path / "tok"), vocab_size=400)  # > the model's 384
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), src)
    refused(src, str(tmp_path / "w"), "vocab_size=384", "400")
    with open(os.path.join(src, "tokenizer.json"), "w") as f:
        f.write('{"model": ')
    refused(src, str(tmp_path / "w"), "tokenizer.json", "does not load")
    tok_dir = train("bytelevel", str(tmp_path / "tok2"), vocab_size=300)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, name), src)
    w = str(tmp_path / "w")
    cfg = import_hf(src, w)
    assert cfg.data.tokenizer == "hf"
    plan, _ = plan_lib.restore_one_device(w)
    want = HFTokenizer(src)
    assert plan.tokenizer.name == want.name and plan.tokenizer.eos_id == want.eos_id
    np.testing.assert_array_equal(plan.tokenizer.encode(TEXT), want.encode(TEXT))


def test_gguf_unpermute_inverts_llama_cpp_permute():
    from bitjax.import_gguf import unpermute

    def permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute, restated
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    assert not np.array_equal(permute(w, 6), w)
    np.testing.assert_array_equal(unpermute(permute(w, 6), 6), w)


def test_gguf_unsupported_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    p = str(tmp_path / "gpt2.gguf")
    wr = gguf.GGUFWriter(p, "gpt2")
    wr.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    refused(p, str(tmp_path / "w"), "GGUF architecture 'gpt2'")
