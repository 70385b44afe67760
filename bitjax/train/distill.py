"""Autoregressive distillation: a frozen teacher run's next-token distributions train the student.

    python -m bitjax.main --config configs/transformer.py:quant=b158,size=tiny \
        --config.distill.teacher_workdir=runs/fp --workdir runs/b158_distilled

config.distill (off while teacher_workdir is ''):
  teacher_workdir: a finished or unfinished bitjax run; its stored config gives the teacher's model (any
    family) and its latest checkpoint the parameters. Same tokenizer and vocabulary size as the student.
  loss: 'ce' (default) or 'kl'. With p = softmax(z_t / T) (teacher) and q = softmax(z_s / T) (student)
    at every predicted position i, averaged over the N positions the label loss counts (the mask):
      'ce':  L_dis = −T²/N · Σ_i Σ_c p_ic log q_ic
             the cross-entropy to the teacher's softmax: FBI-LLM's autoregressive distillation loss
             (Ma et al. 2024, arXiv:2407.07093, §3.2), also Bi-Mamba's (Tang et al. 2024,
             arXiv:2411.11843, §3); they use T = 1.
      'kl':  L_dis =  T²/N · Σ_i Σ_c p_ic (log p_ic − log q_ic) = KL(teacher ‖ student)
             Hinton et al. 2015 (arXiv:1503.02531, §2): soft targets at temperature T, the loss
             scaled by T² so its gradients keep their size as T changes.
    'ce' and 'kl' differ by the teacher's entropy, a constant for the student: same gradients.
  temperature: T > 0 (1 = the distributions as they are).
  label_weight: w ∈ [0, 1]; the trainer minimises (1 − w)·L_dis + w·L_label (L_label = the usual
    next-token cross-entropy). 0 (default) = pure distillation, as FBI-LLM and Bi-Mamba train.

The teacher is frozen: its parameters are an input of the jitted train step (sharded on the student's
mesh with the student's axis rules), get no gradient and no optimizer state, and are not checkpointed
with the student (a resume reloads them from the teacher's workdir, so it stays bit-exact).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from bitjax import config as config_lib
from bitjax import errors

LOSSES = ("ce", "kl")
# fingerprint keys (bitjax.train.resume.data_fingerprint) that name the tokenizer, not the text
TOKENIZER_KEYS = ("data.tokenizer", "data.vocab_size", "tokenizer vocabulary")


def default_config() -> ConfigDict:
    return ConfigDict(dict(teacher_workdir="", loss="ce", temperature=1.0, label_weight=0.0))


def validate_config(cfg, name: str = "config.distill") -> None:
    """ValueError naming the bad field of config.distill (the teacher itself is checked by `check_teacher`)."""
    config_lib.check_fields(cfg, default_config(), name, "bitjax.train.distill.default_config()")

    def need(ok, field, fix):
        if not ok:
            raise ValueError(f"{name}.{field}={cfg[field]!r} is invalid: {fix}")

    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    need(isinstance(cfg.teacher_workdir, str), "teacher_workdir", "must be '' (off) or a run's workdir")
    need(cfg.loss in LOSSES, "loss", f"choose one of {LOSSES}")
    need(num(cfg.temperature) and cfg.temperature > 0, "temperature", "must be a number > 0")
    need(
        num(cfg.label_weight) and 0 <= cfg.label_weight <= 1,
        "label_weight",
        "must be in [0, 1] (0 = pure distillation, 1 = labels only)",
    )
    wd = cfg.teacher_workdir
    if wd:
        need(
            os.path.isdir(os.path.join(wd, "checkpoints")),
            "teacher_workdir",
            "holds no checkpoints/: name the workdir of a trained bitjax run (e.g. runs/fp from "
            "python -m bitjax.main --config configs/transformer.py:quant=fp --workdir runs/fp)",
        )


def loss(
    student_logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array, kind: str = "ce", temperature: float = 1.0
):
    """(Σ over masked positions of the per-position distillation loss, number of masked positions).

    logits [B, L, V] (any float; computed in float32), mask [B, L]. See the module docstring for the
    formulas; the teacher gets no gradient.
    """
    t = jnp.asarray(temperature, jnp.float32)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    log_p = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t, axis=-1)
    p = jnp.exp(log_p)
    if kind == "ce":
        per_pos = -jnp.sum(p * log_q, axis=-1)
    elif kind == "kl":
        per_pos = jnp.sum(p * (log_p - log_q), axis=-1)
    else:
        raise ValueError(f"distillation loss {kind!r}: choose one of {LOSSES}")
    return jnp.sum(per_pos * mask) * t * t, jnp.sum(mask)


def check_teacher(workdir: str, teacher_fp: dict, teacher_vocab, student_fp: dict, student_vocab: int) -> None:
    """UserError unless the teacher run tokenizes as the student does (checked before its parameters load).

    *_fp: the runs' data fingerprints (bitjax.train.resume.data_fingerprint); only their tokenizer
    fields are compared (the teacher may have been trained on other text). *_vocab: the runs'
    config.model.vocab_size (the logits' width): both softmaxes must range over one vocabulary.
    """
    diffs = [
        f"{k}: teacher {teacher_fp[k]!r}, student {student_fp[k]!r}"
        for k in TOKENIZER_KEYS
        if k in teacher_fp and k in student_fp and teacher_fp[k] != student_fp[k]
    ]
    if teacher_vocab != student_vocab:
        diffs.append(f"config.model.vocab_size: teacher {teacher_vocab!r}, student {student_vocab!r}")
    if diffs:
        raise errors.UserError(
            f"config.distill.teacher_workdir={workdir!r} was trained with another tokenizer or vocabulary "
            f"({'; '.join(diffs)}): the teacher's and the student's next-token distributions must range "
            f"over the same tokens. Give the student the teacher's config.data tokenizer settings and "
            f"--config.model.vocab_size={teacher_vocab}, or choose a teacher trained with the student's."
        )
