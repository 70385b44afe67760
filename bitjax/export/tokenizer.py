"""A run's tokenizer as HF tokenizer files, so `AutoTokenizer.from_pretrained(export)` encodes bitjax's ids.

    files = save_tokenizer(tokenizer, out_dir)     # tokenizer.json, tokenizer_config.json, [tokenizer.model]
    save_generation_config(tokenizer, out_dir)     # generation_config.json: bos/eos/pad

byte: a byte-level BPE with no merges whose 256 pieces are GPT-2's byte alphabet (Radford et al. 2019),
piece b ↔ id b, so every text tokenizes to its UTF-8 bytes and decodes back to them; <pad>/<s>/</s> at
bitjax's ids 256/257/258. sentencepiece: the model's own tokenizer.model, plus a tokenizer.json with its
Unigram pieces and scores (Kudo 2018) over the normalization bitjax trains with (identity, no dummy
prefix, ' ' → '▁', byte fallback), control/byte pieces scored −1e9 so that they are never matched
against literal text (SentencePiece only emits them as specials and fallback). hf: the workdir's copy
of the tokenizer.json and its tokenizer_config.json, specials set to bitjax's (its post-processor, e.g. a
Llama's BOS, is kept: bitjax's ids are HF's with add_special_tokens=False).
For byte and sentencepiece, `split_special_tokens` keeps HF from turning a literal "<s>" in the text into
the special id (bitjax encodes it as text); an hf tokenizer keeps its own behaviour (bitjax's encode
matches its added tokens, as HF does).
"""

from __future__ import annotations

import json
import os
import shutil

from bitjax.data import tokenizers as tok_lib

MAX_LENGTH = 2048  # the exported config's max_position_embeddings


def _byte_tokenizer_json(tok: tok_lib.ByteTokenizer):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = {b: c for c, b in tok_lib._gpt2_byte_decoder().items()}  # byte → its stand-in character
    t = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    names = {tok.pad_id: "<pad>", tok.bos_id: "<s>", tok.eos_id: "</s>"}
    t.add_special_tokens([AddedToken(names[i], special=True, normalized=False) for i in sorted(names)])
    for i, name in names.items():
        assert t.token_to_id(name) == i, (name, i)  # added tokens take the ids after the 256 bytes
    return t, {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def _spm_tokenizer_json(tok: tok_lib.SentencePieceTokenizer):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    sp = tok.sp
    special = lambda i: sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)
    vocab = [(sp.id_to_piece(i), -1e9 if special(i) else sp.get_score(i)) for i in range(tok.vocab_size)]
    t = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    t.normalizer = normalizers.Replace(" ", "\u2581")
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    ctrl = [i for i in range(tok.vocab_size) if sp.is_control(i) or sp.is_unknown(i)]
    t.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in ctrl])
    conf = {k: sp.id_to_piece(i) for k, i in (("pad_token", tok.pad_id), ("bos_token", tok.bos_id))}
    conf.update(eos_token=sp.id_to_piece(tok.eos_id), unk_token=sp.id_to_piece(sp.unk_id()))
    return t, conf


def save_tokenizer(tokenizer: tok_lib.Tokenizer, out_dir: str) -> list[str]:
    """Writes HF tokenizer files for `tokenizer` into `out_dir`; returns their names (see module doc)."""
    base = {"clean_up_tokenization_spaces": False, "model_max_length": MAX_LENGTH}
    if isinstance(tokenizer, tok_lib.HFTokenizer):
        conf_file = os.path.join(os.path.dirname(tokenizer.model_path), "tokenizer_config.json")
        conf = {}
        if os.path.exists(conf_file):
            with open(conf_file) as f:
                conf = json.load(f)
        shutil.copyfile(tokenizer.model_path, os.path.join(out_dir, "tokenizer.json"))
        tok_json = tokenizer._tok
        conf.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        if tokenizer.chat_template:  # inline, wherever the source kept it
            conf["chat_template"] = tokenizer.chat_template
        conf.setdefault("model_max_length", MAX_LENGTH)
        files = ["tokenizer.json"]
    else:
        if isinstance(tokenizer, tok_lib.ByteTokenizer):
            tok_json, conf = _byte_tokenizer_json(tokenizer)
            files = []
        elif isinstance(tokenizer, tok_lib.SentencePieceTokenizer):
            tok_json, conf = _spm_tokenizer_json(tokenizer)
            shutil.copyfile(tokenizer.model_path, os.path.join(out_dir, "tokenizer.model"))
            files = ["tokenizer.model"]
        else:
            raise TypeError(f"tokenizer {tokenizer.name!r} has no HF export")
        tok_json.save(os.path.join(out_dir, "tokenizer.json"))
        files.append("tokenizer.json")
        conf = {"tokenizer_class": "PreTrainedTokenizerFast", **base, **conf, "split_special_tokens": True}
        conf.update(add_bos_token=False, add_eos_token=False)  # bitjax adds no specials when it encodes
    # bitjax's specials, whatever the source config named (pad falls back to eos there)
    for key, i in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id), ("pad_token", tokenizer.pad_id)):
        conf[key] = tok_json.id_to_token(int(i))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(conf, f, indent=2, ensure_ascii=False)
    return [*files, "tokenizer_config.json"]


def save_generation_config(tokenizer: tok_lib.Tokenizer, out_dir: str) -> str:
    """generation_config.json with the tokenizer's bos/eos/pad (what `generate` and `pipeline` stop and pad with)."""
    conf = {"bos_token_id": int(tokenizer.bos_id), "eos_token_id": int(tokenizer.eos_id)}
    conf["pad_token_id"] = int(tokenizer.pad_id)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    return "generation_config.json"
