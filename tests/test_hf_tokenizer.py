"""data.tokenizer='hf': an HF tokenizer.json through bitjax's Tokenizer interface (issue 27 item 1).

The tokenizers are trained here, offline, by the `tokenizers` library on a few stdlib files: a GPT-2
style byte-level BPE and a SentencePiece-style one (Metaspace + <0xXX> byte fallback). token_bytes is
checked against the UTF-8 length of the text itself (what makes bits/byte exact).
"""

from __future__ import annotations

import json
import os
import sysconfig

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

import builders

from bitjax.data import config as data_config
from bitjax.data import tokenizers as tok_lib

TEXT = builders.TEXT


def stdlib_text(name, n=20000):
    with open(os.path.join(sysconfig.get_paths()["stdlib"], name), encoding="utf-8") as f:
        return f.read()[:n]


train = builders.hf_tokenizer  # (kind, directory) → the directory, holding a trained tokenizer.json


@pytest.fixture(scope="module", params=["bytelevel", "sentencepiece"])
def hf_dir(request, tmp_path_factory):
    return train(request.param, str(tmp_path_factory.mktemp(request.param)))


def test_interface(hf_dir):
    tok = tok_lib.HFTokenizer(hf_dir)
    ref = tokenizers.Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    start, end = ref.token_to_id("<|im_start|>"), ref.token_to_id("<|im_end|>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (start, end, end)  # no pad_token: eos
    assert tok.vocab_size == ref.get_vocab_size() and tok.token_bytes.shape == (tok.vocab_size,)
    assert tok.chat_template == "{{ x }}"
    for text in (TEXT, stdlib_text("calendar.py", 3000)):  # characters the SentencePiece-style one knows
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and len(ids) > 0
        assert tok.decode(ids) == text
        # bits/byte: the pieces' bytes add up to the text's UTF-8 length (a SentencePiece-style
        # tokenizer's dummy prefix '▁' on the first word counts one space the text does not hold)
        prefix = int("sentencepiece" in hf_dir and not text.startswith(" "))
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8")) + prefix
    assert all(tok.token_bytes[i] == 0 for i in (tok.bos_id, tok.eos_id))
    # specials in the id stream: dropped by decode, 0 bytes
    ids = np.concatenate([[tok.bos_id], tok.encode("ab"), [tok.eos_id]])
    assert tok.decode(ids) == "ab" and int(tok.token_bytes[ids].sum()) == 2 + int("sentencepiece" in hf_dir)
    assert [list(x) for x in tok.encode_batch(["ab", TEXT])] == [list(tok.encode("ab")), list(tok.encode(TEXT))]
    # the file itself, or its directory: one tokenizer, named by the file's hash
    assert tok_lib.HFTokenizer(os.path.join(hf_dir, "tokenizer.json")).name == tok.name
    assert tok.name.startswith("hf-")


def test_make_tokenizer_and_bad_files(tmp_path, hf_dir):
    cfg = data_config.complete({"tokenizer": "hf", "tokenizer_path": hf_dir})
    assert tok_lib.make_tokenizer(cfg).name == tok_lib.HFTokenizer(hf_dir).name
    with pytest.raises(ValueError, match="tokenizer_path"):
        tok_lib.make_tokenizer(data_config.complete({"tokenizer": "hf"}))
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": ')
    with pytest.raises(ValueError, match="does not load"):
        tok_lib.HFTokenizer(str(bad))
    with pytest.raises(ValueError, match="does not load"):
        tok_lib.HFTokenizer(str(tmp_path / "missing"))


@pytest.mark.slow
def test_a_run_trains_with_it_and_carries_it(tmp_path):
    """A tiny fp run with data.tokenizer=hf: the tokenizer is copied into the workdir (restored from
    there once the original is gone), and a changed copy is refused."""
    import shutil

    from test_trainer import FILES, tiny_config

    from bitjax import errors
    from bitjax.run import plan as plan_lib
    from bitjax.train import trainer

    src = train("bytelevel", str(tmp_path / "tok"))
    want = tok_lib.HFTokenizer(src)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in FILES:
        shutil.copy(f, corpus / os.path.basename(f))
    cfg = tiny_config(
        "fp",
        steps=2,
        data_dir=str(tmp_path / "tfds"),
        **{
            "data.paths": (str(corpus / "*.py"),),
            "data.tokenizer": "hf",
            "data.tokenizer_path": src,
            "model.vocab_size": want.vocab_size,
            "optim.warmup_steps": 1,
        },
    )
    workdir = str(tmp_path / "run")
    trainer.train(cfg, workdir)
    shutil.rmtree(src)
    plan, _ = plan_lib.restore(workdir)
    tok = plan.tokenizer
    assert tok.name == want.name and (tok.bos_id, tok.eos_id, tok.pad_id) == (want.bos_id, want.eos_id, want.pad_id)
    np.testing.assert_array_equal(tok.encode(TEXT), want.encode(TEXT))
    stored = os.path.join(workdir, "tokenizer", want.name, "tokenizer.json")
    with open(stored) as f:
        spec = json.load(f)
    spec["added_tokens"][0]["content"] = "<|changed|>"
    with open(stored, "w") as f:
        json.dump(spec, f)
    with pytest.raises(errors.UserError, match="not the tokenizer this run was trained with"):
        plan_lib.restore(workdir)


CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_chat_prompt_is_transformers_apply_chat_template(tmp_path):
    """bitjax.sample --chat renders the prompt as transformers does (SmolLM2's ChatML-style template)."""
    transformers = pytest.importorskip("transformers")
    from bitjax import errors
    from bitjax.sample import chat_prompt

    d = train("bytelevel", str(tmp_path / "tok"))
    conf = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**conf, "chat_template": CHATML}))
    tok = tok_lib.HFTokenizer(d)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    question = "What is the capital of France?"
    want = hf.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    assert chat_prompt(tok, question) == want
    assert want.endswith("<|im_start|>assistant\n")
    im_start = tok.encode("<|im_start|>")  # the rendered specials encode as their ids
    assert list(im_start) == [tokenizers.Tokenizer.from_file(f"{d}/tokenizer.json").token_to_id("<|im_start|>")]
    with pytest.raises(errors.UserError, match="no chat template"):
        chat_prompt(tok_lib.ByteTokenizer(), question)
    # transformers 5 writes the template apart, as chat_template.jinja: read, and stored with the run
    from bitjax.run import plan as plan_lib

    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**conf, "chat_template": None}))
    (tmp_path / "tok" / "chat_template.jinja").write_text(CHATML)
    apart = tok_lib.HFTokenizer(d)
    assert chat_prompt(apart, question) == want
    plan_lib.store_tokenizer(str(tmp_path / "run"), apart)
    stored = tok_lib.HFTokenizer(str(tmp_path / "run" / "tokenizer" / apart.name))
    assert stored.chat_template == CHATML
