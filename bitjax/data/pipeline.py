"""From a corpus to packed, seeded, per-host numpy batches.

  corpus (tfds.data_source) --tokenize once, cache .npy--> flat int array
      docs joined as d0 <eos> d1 <eos> ...                  tokens[T]
  --> windows of L+1 tokens at stride L (window i = tokens[iL : iL+L+1], so
      every token but the first is a target exactly once per epoch)
  --> train: grain MapDataset .shuffle(seed).repeat(): a fresh permutation
      per epoch; global batch `step` = rows [step*B, (step+1)*B)
      eval:  the windows in order, last ones padded (mask 0), never shuffled

Every batch is a pure function of (seed, step): resuming from a checkpoint
only needs the step, and the global batch does not depend on the number of
processes (each process reads only its own rows).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from bitjax.data import builders  # Also registers the local tfds builders.
from bitjax.data import config as config_lib
from bitjax.data import tokenizers as tok_lib
from bitjax.data.text import DataError

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]  # inputs/targets int32[b, L], mask float32[b, L]

_LOCAL_BUILDERS = ("python_stdlib", "text_files")
_READ_CHUNK = 1024  # examples per __getitems__ call


# ----------------------------------------------------------------------------
# Per-host sharding
# ----------------------------------------------------------------------------


def host_slice(global_batch_size: int, process_index: int = 0, process_count: int = 1) -> slice:
    """Rows of the global batch that process `process_index` feeds.

    Rows [pi*B/pc, (pi+1)*B/pc): concatenating the slices of all processes in
    order gives back the global batch, whatever `process_count` is.

    Raises:
      ValueError: B not divisible by process_count, or a bad process_index.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")
    if global_batch_size % process_count:
        raise ValueError(
            f"config.batch_size={global_batch_size} (the global batch) is not "
            f"divisible by process_count={process_count}; use a multiple of it."
        )
    per_host = global_batch_size // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def shard_batch(batch: Batch, process_index: int = 0, process_count: int = 1) -> Batch:
    """The process-local rows of a global batch (see `host_slice`)."""
    rows = host_slice(len(next(iter(batch.values()))), process_index, process_count)
    return {k: v[rows] for k, v in batch.items()}


# ----------------------------------------------------------------------------
# Train / eval streams
# ----------------------------------------------------------------------------


class _Windows(Sequence):
    """Random-access view: window i = tokens[i*L : i*L + L + 1] (int32[<=L+1]).

    The last window may be shorter when `partial` (eval); never otherwise.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, partial: bool = False):
        self.tokens, self.seq_len = tokens, seq_len
        n = len(tokens) - 1  # number of (input, target) pairs
        self.n = -(-n // seq_len) if partial else n // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(i)
        start = i * self.seq_len
        return np.asarray(self.tokens[start : start + self.seq_len + 1], np.int32)


def _to_batch(windows: list[np.ndarray], seq_len: int, pad_id: int) -> Batch:
    """Pads windows to L+1 and splits them into inputs/targets/mask [b, L]."""
    rows = np.full((len(windows), seq_len + 1), pad_id, np.int32)
    mask = np.zeros((len(windows), seq_len), np.float32)
    for r, w in enumerate(windows):
        rows[r, : len(w)] = w
        mask[r, : max(len(w) - 1, 0)] = 1.0
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": mask}


def _shuffle_seed(seed: int) -> int:
    # grain reseeds epoch e with seed + e: hash the user seed so that seed s,
    # epoch 1 is not seed s+1, epoch 0.
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


class TrainData:
    """The infinite training stream; `batch(step)` is a pure function.

    Attributes:
      tokens: the train split's token stream, int[T] (docs + one eos each).
      windows: random-access windows of L+1 tokens (one epoch, unshuffled).
      dataset: grain MapDataset of windows, shuffled per epoch, infinite.
      num_tokens: T.
      num_sequences: windows per epoch, (T - 1) // seq_len.
      steps_per_epoch: num_sequences / batch_size (may be fractional; epochs
        are not aligned to batches).
    """

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int, pad_id: int):
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.pad_id, self.tokens = pad_id, tokens
        self.windows = _Windows(tokens, seq_len)
        self.num_tokens, self.num_sequences = len(tokens), len(self.windows)
        self.steps_per_epoch = self.num_sequences / batch_size
        self.dataset = grain.MapDataset.source(self.windows).shuffle(seed=_shuffle_seed(seed)).repeat()

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> Batch:
        """Process-local part of global batch `step`.

        Returns:
          {'inputs': int32[b, L], 'targets': int32[b, L], 'mask': float32[b, L]}
          with b = batch_size // process_count; targets[:, t] = inputs[:, t+1]
          shifted (next token) and mask all ones (windows are always full).
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        rows = host_slice(self.batch_size, process_index, process_count)
        first = step * self.batch_size
        windows = [self.dataset[first + r] for r in range(rows.start, rows.stop)]
        return _to_batch(windows, self.seq_len, self.pad_id)

    def iterate(self, start_step: int = 0, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
        """batch(start_step), batch(start_step + 1), ... forever."""
        step = start_step
        while True:
            yield self.batch(step, process_index, process_count)
            step += 1


class EvalData:
    """The validation split as a fixed list of global batches, in order.

    The windows are never shuffled; the tail of the last window and the rows
    after it are padding with mask 0, so no validation token is dropped:
    average the loss with `mask` as weights.

    Attributes:
      tokens: the validation token stream, int[T].
      windows: random-access windows of <= L+1 tokens, in order.
      num_batches: global batches per evaluation.
      num_tokens: target tokens with mask 1 in those batches.
      num_bytes: UTF-8 bytes those targets stand for (tokenizer.token_bytes).
      bytes_per_token: num_bytes / num_tokens.
    """

    def __init__(
        self, tokens: np.ndarray, *, seq_len: int, batch_size: int, num_batches: int, tokenizer: tok_lib.Tokenizer
    ):
        self.seq_len, self.batch_size = seq_len, batch_size
        self.pad_id, self.tokens = tokenizer.pad_id, tokens
        self.windows = _Windows(tokens, seq_len, partial=True)
        self.dataset = grain.MapDataset.source(self.windows)
        available = -(-len(self.dataset) // batch_size)
        self.num_batches = available if num_batches < 0 else min(num_batches, available)
        if available < num_batches:
            log.warning(
                "config.data.eval_batches=%d but the validation split only fills %d batches; using %d.",
                num_batches,
                available,
                available,
            )
        # The evaluated targets are tokens[1 : 1 + n]; count their bytes.
        n = min(self.num_batches * batch_size * seq_len, len(tokens) - 1)
        targets = np.asarray(tokens[1 : 1 + n])
        self.num_tokens = int(n)
        self.num_bytes = int(tokenizer.token_bytes[targets].sum())
        self.bytes_per_token = self.num_bytes / max(self.num_tokens, 1)

    def batch(self, i: int, process_index: int = 0, process_count: int = 1) -> Batch:
        """Process-local part of eval batch `i` (same format as TrainData)."""
        rows = host_slice(self.batch_size, process_index, process_count)
        first = i * self.batch_size
        windows = [
            self.dataset[first + r] if first + r < len(self.dataset) else np.zeros((0,), np.int32)
            for r in range(rows.start, rows.stop)
        ]
        return _to_batch(windows, self.seq_len, self.pad_id)

    def batches(self, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
        """The `num_batches` process-local eval batches, always the same."""
        for i in range(self.num_batches):
            yield self.batch(i, process_index, process_count)

    def bits_per_byte(self, mean_nats_per_token: float) -> float:
        """Converts the masked mean loss over all eval batches to bits/byte."""
        return mean_nats_per_token / math.log(2) / self.bytes_per_token


# ----------------------------------------------------------------------------
# Corpus: tfds data sources by split
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Corpus:
    """Random-access tfds splits of one dataset.

    Attributes:
      identity: tfds full name, e.g. 'python_stdlib/py3.11.7/1.0.0'; keys
        every derived cache.
      sources: {'train': source, 'eval': source} (tfds.data_source objects).
      split_names: {'train': 'train', 'eval': 'validation'} actual tfds names.
      text_key: the feature holding the text.
    """

    identity: str
    sources: dict[str, Sequence]
    split_names: dict[str, str]
    text_key: str

    def texts(self, which: str, order: Sequence[int] | None = None) -> Iterator[str]:
        """Non-empty documents of split `which` ('train' or 'eval') as str."""
        source = self.sources[which]
        order = range(len(source)) if order is None else order
        for start in range(0, len(order), _READ_CHUNK):
            keys = [int(k) for k in order[start : start + _READ_CHUNK]]
            for ex in _read(source, keys):
                text = _as_text(ex, self.text_key, self.identity)
                if text:
                    yield text

    def sample_texts(self, which: str = "train", seed: int = 0) -> Iterator[str]:
        """All documents in a seeded random order (a prefix is a fair sample)."""
        order = np.random.default_rng(seed).permutation(len(self.sources[which]))
        return self.texts(which, order)


def _read(source, keys: list[int]) -> list:
    try:
        return source.__getitems__(keys)  # one batched read
    except (AttributeError, TypeError):  # e.g. tfds.testing.mock_data sources
        return [source[k] for k in keys]


def _as_text(example, key: str, identity: str) -> str:
    if key not in example:
        raise DataError(
            f"{identity}: examples have no feature {key!r} (features: "
            f"{sorted(example)}); set config.data.text_key to the text feature."
        )
    value = example[key]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise DataError(
        f"{identity}: feature {key!r} is not text (got "
        f"{type(value).__name__}); set config.data.text_key to a "
        "tfds.features.Text feature."
    )


def load_corpus(cfg, data_dir: str) -> Corpus:
    """Opens (building if needed) the train / eval splits named by `cfg`.

    `cfg` must be complete (`config.complete`); `get_datasets` ensures it.

    'python_stdlib' and 'text_files' are built locally on first use (no
    network); any other name is a registered tfds dataset, downloaded and
    prepared only if `cfg.download`, and must be in array_record format.
    """
    name = cfg.name
    # array_record: random access (data_source) and no TensorFlow needed.
    kwargs = {"file_format": "array_record"}
    if name == "text_files":
        kwargs["config"] = builders.text_files_config(cfg.paths, cfg.validation_fraction, cfg.encoding)
    local = name in _LOCAL_BUILDERS
    train_split = "train" if local else cfg.train_split
    eval_split = "validation" if local else cfg.eval_split

    def open_split(split):
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=local or cfg.download, builder_kwargs=kwargs
        )

    try:
        train = open_split(train_split)  # Builds / prepares the dataset if needed.
        known = set(train.dataset_info.splits)  # Empty under tfds mock_data.
        if eval_split is None:
            eval_split = "test" if "test" in known and "validation" not in known else "validation"
        if known and eval_split not in known:
            raise DataError(f"{name}: no split {eval_split!r} (splits: {sorted(known)}); set config.data.eval_split.")
        sources = {"train": train, "eval": open_split(eval_split)}
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"config.data.name={name!r} is neither 'python_stdlib', 'text_files' nor a registered tfds dataset name."
        ) from None
    except (AssertionError, KeyError, NotImplementedError, FileNotFoundError) as e:
        raise DataError(
            f"tfds dataset {name!r} split {train_split!r} could not be read from "
            f"{data_dir} as array_record ({type(e).__name__}: {e}). Prepare it "
            "there with file_format='array_record' (or set "
            "config.data.download=True), point config.data.data_dir at a prepared copy, "
            "or fix config.data.train_split."
        ) from e
    return Corpus(
        train.dataset_info.full_name,
        sources,
        {"train": train_split, "eval": eval_split},
        "text" if local else cfg.text_key,
    )


# ----------------------------------------------------------------------------
# Tokens, cached
# ----------------------------------------------------------------------------


def _atomic_save(path: str, array: np.ndarray) -> None:
    # Write + rename: a crash or a concurrent reader never sees half a file.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def cached_tokens(corpus: Corpus, which: str, tokenizer: tok_lib.Tokenizer, cache_dir: str) -> np.ndarray:
    """The split as one flat token array, docs each followed by eos.

    Computed once per (dataset, text key, split, tokenizer) and saved as
    `<cache_dir>/<split>.<tokenizer.name>.npy` (uint16 when the vocab fits),
    then memory-mapped.

    Returns:
      int[T] (uint16 or int32).
    """
    split = corpus.split_names[which]
    path = os.path.join(cache_dir, f"{split}.{tokenizer.name}.npy")
    if not os.path.exists(path):
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
        eos = np.array([tokenizer.eos_id], np.int32)
        parts, docs = [], []

        def flush():  # Batched encoding (SentencePiece is multi-threaded).
            for ids in tokenizer.encode_batch(docs):
                parts.extend((ids.astype(dtype), eos.astype(dtype)))
            docs.clear()

        for text in corpus.texts(which):
            docs.append(text)
            if len(docs) == _READ_CHUNK:
                flush()
        flush()
        _atomic_save(path, np.concatenate(parts) if parts else np.zeros(0, dtype))
    return np.load(path, mmap_mode="r")


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------


def _corpus_and_tokenizer(cfg) -> tuple[Corpus, str, tok_lib.Tokenizer]:
    """(corpus, its cache directory, the tokenizer, trained on its train split if not cached yet)."""
    data_dir = config_lib.resolve_data_dir(cfg)
    corpus = load_corpus(cfg, data_dir)
    cache_dir = os.path.join(data_dir, "bitjax_cache", corpus.identity, corpus.text_key)
    model_path = os.path.join(cache_dir, f"spm-v{cfg.vocab_size}-s{cfg.spm_sample_bytes}.model")
    return corpus, cache_dir, tok_lib.make_tokenizer(cfg, lambda: corpus.sample_texts("train"), model_path)


def get_tokenizer(cfg) -> tok_lib.Tokenizer:
    """The tokenizer of the data config `cfg` alone (the corpus is opened only for a trained one)."""
    cfg = config_lib.complete(cfg)
    if cfg.tokenizer in ("byte", "hf"):  # nothing to train: no corpus needed
        return tok_lib.make_tokenizer(cfg)
    return _corpus_and_tokenizer(cfg)[2]


def get_datasets(cfg) -> tuple[TrainData, EvalData, tok_lib.Tokenizer]:
    """Builds everything the trainer needs from the data config.

    Builds / opens the corpus, makes (or trains) the tokenizer, tokenizes both
    splits once (cached) and checks the result, so bad data fails here, before
    training starts, with a `DataError` that says what to fix.

    Args:
      cfg: `default_config()`-shaped ConfigDict (`config.data` of the trainer).

    Returns:
      (train, eval, tokenizer): `train.batch(step, pi, pc)` and
      `eval.batches(pi, pc)` give process-local numpy batches of
      batch_size // pc rows.

    Multi-host: every process calls this. The first call builds the dataset
    and caches under the data_dir; with a data_dir shared between hosts, let
    process 0 call it first (then a barrier) so only one process writes.
    """
    cfg = config_lib.complete(cfg)
    if cfg.seq_len < 1 or cfg.batch_size < 1 or cfg.seed < 0:
        raise ValueError(
            "config.seq_len and batch_size must be >= 1 and seed "
            f">= 0 (got {cfg.seq_len}, {cfg.batch_size}, {cfg.seed})."
        )
    corpus, cache_dir, tokenizer = _corpus_and_tokenizer(cfg)
    train_tokens = cached_tokens(corpus, "train", tokenizer, cache_dir)
    eval_tokens = cached_tokens(corpus, "eval", tokenizer, cache_dir)
    need = cfg.seq_len + 1
    if len(train_tokens) < need:
        raise DataError(
            f"{corpus.identity}: the train split has {len(train_tokens)} tokens "
            f"but one sequence needs seq_len + 1 = {need}; lower "
            "config.seq_len or add text."
        )
    if len(eval_tokens) < 2:
        raise DataError(
            f"{corpus.identity}: the {corpus.split_names['eval']!r} split is "
            "empty; add text or choose another config.data.eval_split."
        )
    train = TrainData(
        train_tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed, pad_id=tokenizer.pad_id
    )
    evaluation = EvalData(
        eval_tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size, num_batches=cfg.eval_batches, tokenizer=tokenizer
    )
    return train, evaluation, tokenizer
