"""Tokenizers: byte-level (default) and a locally trained SentencePiece.

Both share one interface:

  vocab_size, pad_id, bos_id, eos_id   ints
  encode(text: str) -> int32[n]        no specials added
  decode(ids) -> str                   specials dropped, bad UTF-8 replaced
  token_bytes: int32[vocab_size]       UTF-8 bytes each id stands for
  bytes_per_token(ids) -> float        for nats/token -> bits/byte
  name: str                            identity, keys the token caches

`token_bytes` makes bits-per-byte exact for any token stream:
bits/byte = sum(nll) / ln(2) / sum(token_bytes[targets]).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)
# SentencePiece's limit on one training sentence, in bytes; longer lines are cut into pieces below it
# (the trainer would skip them, and fail with an opaque INTERNAL error if every line were too long).
MAX_SENTENCE_BYTES = 16384
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # beside tokenizer_config.json, as transformers 5 writes it


class Tokenizer:
    """Common interface (see the module docstring)."""

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    token_bytes: np.ndarray  # int32[vocab_size]

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        raise NotImplementedError

    def bytes_per_token(self, ids) -> float:
        """UTF-8 bytes per token of `ids` (specials count as tokens of 0 bytes).

        Convert a mean loss over `ids` with bits/byte = nats / ln(2) / this.
        """
        ids = np.asarray(ids).reshape(-1)
        return float(self.token_bytes[ids].sum()) / max(len(ids), 1)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255 plus pad=256, bos=257, eos=258 (vocab_size 259)."""

    name = "byte"
    vocab_size = 259
    pad_id, bos_id, eos_id = 256, 257, 258
    token_bytes = np.array([1] * 256 + [0] * 3, np.int32)

    def encode(self, text: str) -> np.ndarray:
        """str -> int32[len(utf8 bytes)] (lone surrogates become '?')."""
        data = text.encode("utf-8", errors="replace")
        return np.frombuffer(data, np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        return bytes(ids[(ids >= 0) & (ids < 256)].astype(np.uint8)).decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model with ids pad=0, unk=1, bos=2, eos=3.

    Load an existing model with `SentencePieceTokenizer(path)`, or train one
    with `train_sentencepiece`.
    """

    def __init__(self, model_path: str):
        import sentencepiece as spm  # pylint: disable=g-import-not-at-top

        with open(model_path, "rb") as f:
            proto = f.read()
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.bos_id, self.eos_id = (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id())
        # Hash the vocabulary, not the file: the file also records training
        # paths, so equal models trained in different places would differ.
        vocab = [(self.sp.id_to_piece(i), self.sp.get_score(i)) for i in range(self.vocab_size)]
        digest = hashlib.sha256(repr(vocab).encode()).hexdigest()[:12]
        self.name = f"spm{self.vocab_size}-{digest}"
        self.token_bytes = np.array([self._piece_bytes(i) for i in range(self.vocab_size)], np.int32)

    def _piece_bytes(self, i: int) -> int:
        if self.sp.is_control(i) or self.sp.is_unknown(i):
            return 0
        if self.sp.is_byte(i):  # <0xNN> byte-fallback piece.
            return 1
        return len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))

    def encode(self, text: str) -> np.ndarray:
        if "\u2581" not in text:
            return np.asarray(self.sp.encode(text), np.int32)
        # A literal U+2581 is SentencePiece's whitespace meta-symbol and would decode as a
        # space; emit its UTF-8 byte-fallback pieces instead so every text round-trips.
        meta = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode()]
        ids: list[int] = []
        for i, part in enumerate(text.split("\u2581")):
            ids += (meta if i else []) + (self.sp.encode(part) if part else [])
        return np.asarray(ids, np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # One C++ call, multi-threaded, for the texts without a literal U+2581.
        plain = [t for t in texts if "\u2581" not in t]
        fast = iter(self.sp.encode(plain))
        return [np.asarray(next(fast), np.int32) if "\u2581" not in t else self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        keep = (ids >= 0) & (ids < self.vocab_size)
        keep &= (ids != self.pad_id) & (ids != self.bos_id) & (ids != self.eos_id)
        return self.sp.decode(ids[keep].tolist())


def train_sentencepiece(
    texts: Iterable[str],
    model_path: str,
    vocab_size: int,
    *,
    sample_bytes: int = 4_000_000,
    model_type: str = "unigram",
) -> SentencePieceTokenizer:
    """Trains a lossless SentencePiece model on (a prefix of) `texts`.

    Lossless for source code: identity normalization, no dummy prefix, runs of
    spaces kept (and learnable as pieces), byte fallback for anything unseen
    (e.g. '\\n', which never occurs inside a training line). So
    `decode(encode(s)) == s` for any str `s`, and `token_bytes` sums exactly to
    the UTF-8 size of the text.

    Args:
      texts: documents; lines are the training sentences. Pass them in a
        deterministic order (a model is a pure function of them).
      model_path: where to write the model (atomically).
      vocab_size: upper bound; a small corpus may yield fewer pieces.
      sample_bytes: stop reading `texts` after this many UTF-8 bytes.
      model_type: 'unigram' or 'bpe'.
    """
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    if vocab_size < 300:
        raise ValueError(
            f"config.data.vocab_size={vocab_size} is too small for SentencePiece "
            "with byte fallback (256 byte pieces + 4 specials + the corpus' "
            "characters); use >= 300."
        )

    def lines():
        seen = 0
        step = MAX_SENTENCE_BYTES // 4  # characters: at most 4 UTF-8 bytes each
        for text in texts:
            for line in text.splitlines():
                if line.strip():
                    for i in range(0, len(line), step):  # e.g. minified code: one huge line
                        yield line[i : i + step]
                    seen += len(line.encode("utf-8", errors="replace"))
            if seen >= sample_bytes:
                return

    spm.set_random_generator_seed(0)
    model_dir = os.path.dirname(os.path.abspath(model_path))
    os.makedirs(model_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp, _user_errors(vocab_size):
        prefix = os.path.join(tmp, "spm")
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_prefix=prefix,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # Small corpora: fewer pieces, not an error.
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        os.replace(prefix + ".model", model_path)
    log.info("Trained SentencePiece model %s", model_path)
    return SentencePieceTokenizer(model_path)


@contextlib.contextmanager
def _user_errors(vocab_size: int):
    """SentencePiece's INTERNAL errors that are about the data or the config, as a DataError."""
    from bitjax.data.text import DataError  # pylint: disable=g-import-not-at-top

    try:
        yield
    except RuntimeError as e:
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m:
            raise DataError(
                f"config.data.vocab_size={vocab_size} is smaller than the {m[2]} distinct "
                f"characters and specials of this corpus; use a larger one."
            ) from None
        if "sentences_.empty()" in str(e):
            raise DataError(
                "SentencePiece found no training text in the corpus; add text or use config.data.tokenizer='byte'."
            ) from None
        raise


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (Radford et al. 2019, encoder.py bytes_to_unicode), inverted: each of
    the 256 printable stand-in characters → the byte it stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _kinds(node) -> set[str]:
    """Every component `type` in a tokenizer.json pre_tokenizer/decoder tree (Sequence included)."""
    if isinstance(node, dict):
        return {node.get("type", "")} | {k for v in node.values() for k in _kinds(v)}
    if isinstance(node, list):
        return {k for v in node for k in _kinds(v)}
    return set()


class HFTokenizer(Tokenizer):
    """An HF `tokenizers` tokenizer.json (e.g. a pretrained model's BPE), with its specials.

    `path`: a tokenizer.json, or a directory holding one (and optionally tokenizer_config.json, whose
    bos_token / eos_token / pad_token name the special ids; pad falls back to eos, bos to eos; its
    chat_template, or a chat_template.jinja beside it, is the chat template).
    encode adds no specials (the tokenizer's post-processor is not run), as the other tokenizers.
    token_bytes: byte-level BPE (GPT-2 / Llama-3 / SmolLM) pieces through GPT-2's byte alphabet;
    SentencePiece-style pieces with '▁' → one space byte and '<0xXX>' → one byte; specials 0 (the
    dummy-prefix '▁' of a text's first word counts one byte more than the text holds).
    name: 'hf-<sha256 of tokenizer.json, 12 hex>' (a changed file is another tokenizer).
    """

    def __init__(self, path: str):
        import json

        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as e:
            raise ValueError("config.data.tokenizer='hf' needs the tokenizers package: pip install tokenizers") from e
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        try:
            self._tok = _Tok.from_file(file)
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"tokenizer {file} does not load ({' '.join(str(e).split())})") from e
        self.model_path = file
        with open(file, "rb") as f:
            raw = f.read()
        self.name = f"hf-{hashlib.sha256(raw).hexdigest()[:12]}"
        spec = json.loads(raw)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        specials = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        conf = {}
        conf_file = os.path.join(os.path.dirname(file), "tokenizer_config.json")
        if os.path.exists(conf_file):
            with open(conf_file) as f:
                conf = json.load(f)

        def special(key):
            tok = conf.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            return self._tok.token_to_id(tok) if tok else None

        self.eos_id = special("eos_token")
        if self.eos_id is None:
            self.eos_id = min(specials) if specials else self.vocab_size - 1
        self.bos_id = special("bos_token")
        self.bos_id = self.eos_id if self.bos_id is None else self.bos_id
        self.pad_id = special("pad_token")
        self.pad_id = self.eos_id if self.pad_id is None else self.pad_id
        self.chat_template = conf.get("chat_template")
        jinja = os.path.join(os.path.dirname(file), CHAT_TEMPLATE_FILE)  # transformers 5 saves it apart
        if not self.chat_template and os.path.exists(jinja):
            with open(jinja, encoding="utf-8") as f:
                self.chat_template = f.read()
        byte_level = "ByteLevel" in _kinds([spec.get("pre_tokenizer"), spec.get("decoder")])
        decoder = _gpt2_byte_decoder()
        nbytes = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if piece is None or i in specials:
                continue
            if byte_level:
                nbytes[i] = sum(1 if c in decoder else len(c.encode("utf-8")) for c in piece)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                nbytes[i] = 1
            else:
                nbytes[i] = len(piece.replace("▁", " ").encode("utf-8"))
        self.token_bytes = nbytes

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        out = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in out]

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=True)


def make_tokenizer(cfg, texts: Callable[[], Iterable[str]] | None = None, model_path: str | None = None) -> Tokenizer:
    """Builds the tokenizer named by `cfg.tokenizer`.

    Args:
      cfg: the data ConfigDict (`tokenizer`, `vocab_size`, `spm_sample_bytes`).
      texts: for 'sentencepiece', a callable returning training documents;
        only called when no model exists at `model_path` yet.
      model_path: for 'sentencepiece', the model file, reused when present.
    """
    kind = cfg.tokenizer
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        if model_path is None:
            raise ValueError("sentencepiece tokenizer needs a model_path.")
        if os.path.exists(model_path):
            return SentencePieceTokenizer(model_path)
        if texts is None:
            raise ValueError(f"No SentencePiece model at {model_path} and no texts to train one.")
        return train_sentencepiece(texts(), model_path, cfg.vocab_size, sample_bytes=cfg.spm_sample_bytes)
    if kind == "hf":
        if not cfg.get("tokenizer_path"):
            raise ValueError("config.data.tokenizer='hf' needs config.data.tokenizer_path (a tokenizer.json or HF dir)")
        return HFTokenizer(cfg.tokenizer_path)
    raise ValueError(f"Unknown config.data.tokenizer {kind!r}; use 'byte', 'sentencepiece' or 'hf'.")
