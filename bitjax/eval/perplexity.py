"""Bits/byte, nats/token and token perplexity of any local text under a run's tokenizer.

Each file is one document, scored as the training data is laid out (documents follow an <eos>):
<eos> d, every token of d predicted once, long documents in non-overlapping windows of the model's
context (:func:`bitjax.eval.scoring.rolling_windows`, the harness's loglikelihood_rolling).

    bits/byte = Σ nll / (ln 2 · Σ bytes),   nats/token = Σ nll / Σ tokens,   token_ppl = exp(nats/token)

Bytes are the UTF-8 bytes the scored tokens stand for (tokenizer.token_bytes), so bits/byte compares
across tokenizers; token perplexity does not. Files are read as training reads them (the run's
config.data.encoding; binary or undecodable files refused) and their bytes counted from the file.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence

import numpy as np

from bitjax.data import text as text_lib
from bitjax.eval.scoring import Scorer, rolling_windows


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """Glob patterns → sorted files; ValueError naming a pattern that matches no file."""
    files = []
    for pattern in patterns:
        found = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
        if not found:
            raise ValueError(f"--text_files {pattern!r} matches no file")
        files += [f for f in found if f not in files]
    return files


def score_texts(scorer: Scorer, texts: Sequence[str], num_bytes: int | None = None) -> dict:
    """{'bits_per_byte', 'nats_per_token', 'token_ppl', 'tokens', 'bytes', 'nats', 'documents'} over `texts`.

    num_bytes: the bytes the texts were read from (default: the UTF-8 bytes of the scored tokens).
    """
    tok = scorer.tokenizer
    windows, total_tokens, total_bytes = [], 0, 0
    for text in texts:
        ids = tok.encode(text)
        total_tokens += len(ids)
        total_bytes += int(tok.token_bytes[ids].sum())
        windows += list(rolling_windows(ids.tolist(), tok.eos_id, scorer.max_length))
    if num_bytes is not None:
        total_bytes = int(num_bytes)
    if total_tokens == 0 or total_bytes == 0:
        raise ValueError("the texts hold no tokens to score (empty files?)")
    logp, _ = scorer.score(windows)
    nats = -float(np.sum(logp))
    per_token = nats / total_tokens
    return {
        "bits_per_byte": nats / (math.log(2) * total_bytes),
        "nats_per_token": per_token,
        "token_ppl": math.exp(min(per_token, 700.0)),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "nats": nats,
        "documents": len(texts),
    }


def score_files(scorer: Scorer, patterns: Sequence[str], encoding: str | None = None) -> dict:
    """score_texts over the files matching `patterns`, plus the file list.

    encoding: as config.data.encoding (default: the scorer's run's), read by the training reader
    (bitjax.data.text.read_text: a binary or undecodable file is a DataError naming it); bits/byte
    divides by the files' own sizes in bytes.
    """
    if encoding is None:
        encoding = scorer.plan.config.data.get("encoding", text_lib.DEFAULT_ENCODING)
    files = expand_paths(patterns)
    texts = [text_lib.read_text(path, encoding) for path in files]
    num_bytes = sum(os.path.getsize(path) for path in files)
    return {**score_texts(scorer, texts, num_bytes=num_bytes), "files": files, "encoding": encoding}
