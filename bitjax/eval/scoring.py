"""Load a trained run and score token sequences with it in fixed shapes (no lm-eval dependency).

    setup, params = load(workdir)                 # the run's config, tokenizer, mesh and parameters
    scorer = Scorer(setup, params, batch_size=8)
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
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from bitjax import errors
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import config as train_config
from bitjax.run import mesh as mesh_lib
from bitjax.train import trainer


def _data_parallel_size(config: ConfigDict, mesh) -> int:
    axes = dict(mesh_lib.rules_from_config(config.axis_rules)).get("batch") or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes)


def load(workdir: str, step: int | None = None, *, devices=None, mesh: dict | None = None):
    """(Setup, params) of the checkpoint at `step` (default: the latest) in `workdir`.

    The model, data and tokenizer come from the config saved with the checkpoint. mesh: axis sizes
    {data, fsdp, tensor} to run on (default: the run's own config.mesh); devices: default all.
    config.batch_size is rounded up to a multiple of the data-parallel size so that a run trained on
    another device count still loads. A missing workdir, a workdir without checkpoints or an absent
    step raise UserError (a ValueError), and nothing is created on disk.
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise errors.UserError(
            f"--workdir {workdir!r} holds no checkpoints ({ckpt_dir} does not exist): "
            f"check the path, or train first (python -m bitjax.main --workdir ...)"
        )
    ckpt = ckpt_lib.Checkpointer(ckpt_dir)  # the directory exists: orbax creates nothing
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise errors.UserError(f"--workdir {workdir!r} holds no finished checkpoint in {ckpt_dir}; train first")
        if step is not None and step not in steps:
            raise errors.UserError(f"--step {step}: {workdir} has checkpoints at steps {steps} only")
        config = train_config.with_defaults(ckpt.restore_metadata(step)["config"])
        config.distill.teacher_workdir = ""  # a distilled run evaluates (and samples) without its teacher
        if mesh is not None:
            config.mesh = ConfigDict(dict(mesh))
        devices = jax.devices() if devices is None else list(devices)
        dp = _data_parallel_size(config, mesh_lib.make_mesh(config.mesh, devices))
        config.batch_size = -(-config.batch_size // dp) * dp
        setup = trainer.Setup(config, devices=devices)
        target = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_sharding)
        state = ckpt.restore(step, target)
    finally:
        ckpt.close()
    return setup, state["params"]


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
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_length, len(tokens))
    yield [prefix_token] + tokens[:first], first
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        yield tokens[max(end - max_length - 1, 0) : end], n
        done = end


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


class Scorer:
    """Scores sequences with a run's model on its mesh, in fixed (batch_size, bucket) shapes.

    max_length: the longest input the model sees (default config.seq_len, the training length);
    longer sequences are cut from the left.
    """

    def __init__(self, setup, params, batch_size: int = 8, max_length: int | None = None):
        self.setup, self.params = setup, params
        self.tokenizer = setup.tokenizer
        self.max_length = int(max_length or setup.config.seq_len)
        dp = _data_parallel_size(setup.config, setup.mesh)
        self.batch_size = -(-int(batch_size) // dp) * dp  # batch rows shard over the data axes
        self.buckets = length_buckets(self.max_length)
        self.graphdef = setup.graphdef
        self.shapes_compiled: set[tuple[int, int]] = set()

    def model(self):
        """The concrete NNX model (for generation)."""
        return self.setup.model(self.params)

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
            batch = self.setup.global_batch({"inputs": inputs, "targets": targets, "mask": mask})
            self.shapes_compiled.add((self.batch_size, length))
            lp, hit = jax.device_get(_score(self.graphdef, self.params, batch))
            logp[idx], greedy[idx] = lp[: len(idx)], hit[: len(idx)]
        return logp, greedy
