"""Data for the LM trainer: corpora (tfds, array_record), tokenizers, batches.

Entry point::

  from bitjax import data
  train, evaluation, tokenizer = data.get_datasets(data.default_config())
  batch = train.batch(step, jax.process_index(), jax.process_count())
  # {'inputs': int32[b, L], 'targets': int32[b, L], 'mask': float32[b, L]}
  for batch in evaluation.batches(jax.process_index(), jax.process_count()):
    ...
  bpb = evaluation.bits_per_byte(mean_eval_nats_per_token)

Modules: `config` (fields, data_dir), `text` (files, splits, checks),
`builders` (tfds builders 'python_stdlib' and 'text_files'), `tokenizers`,
`pipeline` (caching, packing, shuffling, sharding).
"""

from bitjax.data.config import complete, default_config, resolve_data_dir
from bitjax.data.pipeline import Corpus, EvalData, TrainData, get_datasets, host_slice, load_corpus, shard_batch
from bitjax.data.text import DataError
from bitjax.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer, make_tokenizer, train_sentencepiece

__all__ = [
    "ByteTokenizer",
    "Corpus",
    "DataError",
    "EvalData",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TrainData",
    "complete",
    "default_config",
    "get_datasets",
    "host_slice",
    "load_corpus",
    "make_tokenizer",
    "resolve_data_dir",
    "shard_batch",
    "train_sentencepiece",
]
