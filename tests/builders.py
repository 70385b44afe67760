"""Builders the test modules share: the small stdlib corpus and a tiny trainer config.

A plain module (not a test file), imported as `from builders import tiny_config`; `conftest.py` puts
this directory on sys.path and offers the same as fixtures (`make_config`, `corpus_files`).
"""

import json
import os
import sysconfig

from bitjax.models import transformer
from bitjax.run import config as train_config

STDLIB = sysconfig.get_paths()["stdlib"]
FILES = [
    os.path.join(STDLIB, f)
    for f in ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "colorsys.py", "bisect.py", "heapq.py")
]


def tiny_config(method="b158", steps=30, data_dir=None, **over):
    """A 2-layer d=32 transformer on FILES: 8×32 tokens a step, a log row every step, no periodic eval.

    `over` takes dotted keys as on the command line: tiny_config(**{"optim.lr": 1e-3}).
    """
    c = train_config.trainer_config()
    c.total_steps, c.batch_size, c.seq_len = steps, 8, 32
    c.log_every, c.eval_every = 1, 0
    c.optim.lr, c.optim.warmup_steps = 3e-3, 5
    c.data.name, c.data.paths, c.data.data_dir = "text_files", tuple(FILES), data_dir
    c.data.eval_batches = 2
    c.model = transformer.default_config()
    c.model.update(dict(vocab_size=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64))
    c.model.quant.method = method
    for key, value in over.items():  # dotted keys, as on the command line
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def reload_eval_loss(workdir):
    """(plan, params, eval loss) of the run in `workdir` loaded as bitjax.sample / bitjax.eval load it
    (from the workdir alone) and evaluated on its validation split: what a tool wrote is what it measured."""
    from bitjax import ptq
    from bitjax.run import plan as plan_lib

    plan, params = plan_lib.restore_one_device(workdir)
    _, eval_data = ptq.run_data(plan)
    return plan, params, plan_lib.evaluate(plan, plan.eval_step(), params, eval_data)["eval_loss"]


def losses(workdir):
    """The train losses in metrics.jsonl, by step (the last row of a step wins)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            by_step[r["step"]] = r["train_loss"]
    return [by_step[k] for k in sorted(by_step)]


TEXT = "déjà vu — naïve café 東京 🙂\n\tdef f(x):  return x ** 2  # ok"


def _stdlib_text(name, n=20000):
    with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
        return f.read()[:n]


def hf_tokenizer(kind, d, vocab_size=None):
    """A small HF tokenizer.json (+ tokenizer_config.json: bos <|im_start|>, eos <|im_end|>, a chat template)
    trained offline in `d` by the `tokenizers` library on two stdlib files and TEXT: kind 'bytelevel'
    (GPT-2 style byte-level BPE, 400 pieces) or 'sentencepiece' (Metaspace BPE + <0xXX> pieces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or 400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
        byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials + byte_pieces)
    # TEXT in the corpus: a SentencePiece-style BPE has every character of it (BpeTrainer leaves the
    # <0xXX> pieces as added tokens, outside its model, so its byte fallback is not exercised here)
    tok.train_from_iterator([_stdlib_text("calendar.py"), _stdlib_text("textwrap.py"), TEXT], trainer)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ x }}"}, f)
    return d
