"""The data config (`config.data` of the trainer) and where data lives."""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from bitjax import config as bitjax_config

ENV_DATA_DIR = "BITJAX_DATA_DIR"
_DEFAULT_DATA_DIR = "~/.cache/bitjax/tensorflow_datasets"


def default_config() -> ml_collections.ConfigDict:
    """Data config with every field documented.

    Corpus:
      name: 'python_stdlib' (the running Python's stdlib, built locally),
        'text_files' (the files in `paths`) or any registered tfds dataset name
        (e.g. 'lm1b'; must be prepared as array_record, see `download`).
      paths: list of files / globs ('**' allowed) for 'text_files'.
      text_key: feature holding the text in registered tfds datasets (the
        local corpora always use 'text').
      data_dir: where tfds datasets and bitjax caches (tokens, tokenizer
        models) live; None -> $BITJAX_DATA_DIR or
        ~/.cache/bitjax/tensorflow_datasets.
      train_split: tfds split to train on (registered tfds datasets only).
      eval_split: tfds split to evaluate on (registered tfds datasets only);
        None -> 'validation' if the dataset has one, else 'test'. The local
        corpora always use their own 'train' / 'validation' split by file.
      encoding: how 'text_files' are decoded: a Python codec ('utf-8',
        'latin-1', 'cp1252', ...), optionally ':replace' to turn undecodable
        bytes into U+FFFD (e.g. 'utf-8:replace'). A file that does not decode
        is refused, naming the file.
      validation_fraction: fraction of files ('text_files') held out as
        validation; with too few files, that fraction of each file's tail.
      download: let tfds download and prepare a registered dataset that is not
        in data_dir yet (network!). Local corpora never download.

    Tokenizer:
      tokenizer: 'byte' (259 ids: bytes + pad/bos/eos), 'sentencepiece'
        (trained once on the train split, saved under data_dir) or 'hf'
        (a pretrained HF tokenizer.json: tokenizer_path).
      tokenizer_path: for 'hf', a tokenizer.json or an HF directory holding one
        (its tokenizer_config.json names bos/eos/pad).
      vocab_size: SentencePiece vocabulary size (an upper bound: a tiny corpus
        may give fewer pieces); ignored for 'byte'.
      spm_sample_bytes: UTF-8 bytes of train text (whole documents in a seeded
      random order) used to train SentencePiece.

    Batches:
      seq_len: tokens per row (L); rows are packed windows of the corpus.
      batch_size: GLOBAL rows per step (B), split evenly across processes.
      seed: shuffling seed; batch `step` is a pure function of (seed, step).
      eval_batches: global eval batches per evaluation; -1 = the whole
        validation split (the last batch padded with mask 0).
    """
    c = ml_collections.ConfigDict()
    c.name = "python_stdlib"
    c.paths = ()  # a tuple: `--config.data.paths=a.txt --config.data.paths=b/*.md` on the command line
    c.text_key = "text"
    c.encoding = "utf-8"
    c.data_dir = config_dict.placeholder(str)
    c.train_split = "train"
    c.eval_split = config_dict.placeholder(str)
    c.validation_fraction = 0.03
    c.download = False
    c.tokenizer = "byte"
    c.tokenizer_path = ""
    c.vocab_size = 4096
    c.spm_sample_bytes = 4_000_000
    c.seq_len = 128
    c.batch_size = 16
    c.seed = 0
    c.eval_batches = -1
    return c


def complete(cfg) -> ml_collections.ConfigDict:
    """`cfg` (ConfigDict or dict) with missing fields taken from the defaults.

    Raises:
      ValueError: `cfg` has a field the defaults do not know (likely a typo).
    """
    given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    full = default_config().to_dict()
    bitjax_config.check_fields(given, full, "config.data", "bitjax.data.config.default_config()", missing_ok=True)
    full.update(given)
    paths = full["paths"] or []
    full["paths"] = [paths] if isinstance(paths, str) else list(paths)
    return ml_collections.ConfigDict(full)


def resolve_data_dir(cfg=None) -> str:
    """cfg.data_dir, else $BITJAX_DATA_DIR, else the default (expanded)."""
    d = getattr(cfg, "data_dir", None) or os.environ.get(ENV_DATA_DIR)
    return os.path.abspath(os.path.expanduser(d or _DEFAULT_DATA_DIR))
