"""Score token sequences with a trained run in fixed shapes (no lm-eval dependency).

    plan, params = bitjax.run.plan.restore(workdir)   # the run's config, tokenizer, mesh and parameters
    scorer = Scorer(plan, params, batch_size=8)
    logp, greedy = scorer.score([(tokens, n_pred), ...])   # summed log-prob of each sequence's last n_pred tokens

Sequences are sorted by length, cut into batches of `batch_size` rows (short batches padded with
empty rows) and right-padded to a length bucket (powers of two up to the model's context, then the
context itself), so a whole task needs a handful of compilations. Right padding needs no attention
mask: attention is causal and the models' activation quantizers are per token, so pad tokens after
a position never change its logits; padded targets are masked out of the sums.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax.run.plan import Plan


def _data_parallel_size(plan) -> int:
    axes = dict(plan.rules).get("batch") or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(plan.mesh.shape[a] for a in axes)


def length_buckets(max_length: int, smallest: int = 16) -> list[int]:
    """Padded lengths: powers of two from `smallest` below max_length, then max_length itself."""
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return out + [max_length]


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> Iterator[tuple[list[int], int]]:
    """Non-overlapping prediction windows of a long document: (sequence, n_pred) pairs.

    Every token of `tokens` is predicted exactly once: the first window predicts tokens[:L] after
    `prefix_token`, later ones predict the next L tokens (fewer at the end) with as much preceding
    context as fits in L inputs. Scoring a sequence s means log p(s[-n_pred:] | s[:-n_pred]), so
    each sequence has at most L + 1 tokens (L = max_length). Equals lm-eval's
    get_rolling_token_windows(context_len=1) + make_disjoint_window.
    """
    if int(max_length) < 1:  # a window of ≤ 0 tokens never advances (issue 29.9: an endless loop)
        raise ValueError(f"max_length {max_length}: must be ≥ 1")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_length, len(tokens))
    yield [prefix_token] + tokens[:first], first
    done = first
    for _ in range(len(tokens)):  # each window predicts ≥ 1 token: a bound that cannot fail open
        if done >= len(tokens):
            return
        n = min(len(tokens) - done, max_length)
        end = done + n
        yield tokens[max(end - max_length - 1, 0) : end], n
        done = end
    raise AssertionError("rolling_windows did not finish within len(tokens) windows")


@functools.partial(jax.jit, static_argnames="graphdef")
def _score(graphdef, params, batch):
    """(Σ masked log p(targets) [B], all masked targets are the argmax [B]); batch inputs/targets/mask [B, L].

    Module-level so that Scorers of one model structure share compilations.
    """
    logits = nnx.merge(graphdef, params)(batch["inputs"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tgt = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    hit = jnp.argmax(logits, axis=-1) == batch["targets"]
    mask = batch["mask"] > 0
    return jnp.sum(jnp.where(mask, tgt, 0.0), axis=-1), jnp.all(hit | ~mask, axis=-1)


def check_sizes(batch_size, max_length) -> None:
    """ValueError unless batch_size ≥ 1 and max_length is None (the run's seq_len) or ≥ 1 (issue 29.8)."""
    if int(batch_size) < 1:
        raise ValueError(f"--batch_size {batch_size}: must be ≥ 1")
    if max_length is not None and int(max_length) < 1:
        raise ValueError(f"--max_length {max_length}: must be ≥ 1 (omit it for the run's seq_len)")


class Scorer:
    """Scores sequences with a run's model on its plan's mesh, in fixed (batch_size, bucket) shapes.

    max_length: the longest input the model sees (default config.seq_len, the training length);
    longer sequences are cut from the left.
    """

    def __init__(self, plan: Plan, params, batch_size: int = 8, max_length: int | None = None):
        check_sizes(batch_size, max_length)
        self.plan, self.params = plan, params
        self.tokenizer = plan.tokenizer
        self.max_length = int(plan.config.seq_len if max_length is None else max_length)
        dp = _data_parallel_size(plan)
        self.batch_size = -(-int(batch_size) // dp) * dp  # batch rows shard over the data axes
        self.buckets = length_buckets(self.max_length)
        self.graphdef = plan.graphdef
        self.shapes_compiled: set[tuple[int, int]] = set()

    def model(self):
        """The concrete NNX model (for generation)."""
        return self.plan.model(self.params)

    def bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def score(self, requests: Sequence[tuple[Sequence[int], int]]) -> tuple[np.ndarray, np.ndarray]:
        """requests: (tokens, n_pred), 1 ≤ n_pred < len(tokens) → (float64[N] summed log-prob of the
        last n_pred tokens given the ones before, bool[N] whether each of them is the argmax).

        A sequence longer than max_length + 1 keeps its last max_length + 1 tokens (n_pred is capped
        to what remains scoreable).
        """
        n = len(requests)
        logp, greedy = np.zeros(n, np.float64), np.zeros(n, bool)
        seqs = []
        for tokens, n_pred in requests:
            tokens = np.asarray(tokens, np.int32)[-(self.max_length + 1) :]
            if len(tokens) < 2 or n_pred < 1:
                raise ValueError(f"a scored sequence needs ≥ 2 tokens and n_pred ≥ 1; got {len(tokens)}, {n_pred}")
            seqs.append((tokens, min(int(n_pred), len(tokens) - 1)))
        order = sorted(range(n), key=lambda i: -len(seqs[i][0]))  # similar lengths share a batch
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            length = self.bucket(max(len(seqs[i][0]) - 1 for i in idx))
            inputs = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
            targets = np.zeros((self.batch_size, length), np.int32)
            mask = np.zeros((self.batch_size, length), np.float32)
            for row, i in enumerate(idx):
                tokens, n_pred = seqs[i]
                m = len(tokens) - 1
                inputs[row, :m], targets[row, :m] = tokens[:-1], tokens[1:]
                mask[row, m - n_pred : m] = 1.0
            batch = self.plan.global_batch({"inputs": inputs, "targets": targets, "mask": mask})
            self.shapes_compiled.add((self.batch_size, length))
            lp, hit = jax.device_get(_score(self.graphdef, self.params, batch))
            logp[idx], greedy[idx] = lp[: len(idx)], hit[: len(idx)]
        return logp, greedy
