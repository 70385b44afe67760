"""AdamW with global-norm clipping, LR/weight-decay schedules and a decay mask.

Schedules (``t`` = optimizer step, 0-based; ``W`` = warmup_steps; ``T`` =
total_steps; ``m`` = min_lr_ratio; all are multiples of ``lr``)::

    warmup (t < W):  lr * (t + 1) / W
    then p = min((t - W) / (T - W), 1) and
      'cosine':    lr * (m + (1 - m) * (1 + cos(pi p)) / 2)
      'linear':    lr * (m + (1 - m) * (1 - p))
      'constant':  lr
      'two_stage': BitNet b1.58 2B4T technical report (arXiv:2504.12285):
        t <  T1 = round(stage2_frac * T):  the 'cosine' curve above, i.e. a
                  high-LR cosine laid out over the whole run (it is only half
                  way down when stage 1 ends);
        t >= T1:  abrupt drop to lr * s2 (s2 = stage2_lr_ratio), then cosine to
                  lr * m:  q = min((t - T1) / (T - T1), 1),
                  lr * (m + (s2 - m) * (1 + cos(pi q)) / 2)
        weight decay: weight_decay * lr_t / lr for t < T1 (the stage-1 warmup +
                  cosine shape, peaking at weight_decay), 0 for t >= T1.

The report describes stage 1 as a high-peak cosine, stage 2 as an abrupt drop
to a "significantly lower" peak followed by cosine decay, and weight decay as a
cosine peaking at 0.1 in stage 1 and disabled in stage 2. The 2B run's numbers
as quoted in summaries (1.5e-3 → ~8e-4 over stage 1, then 5e-4 → 0) give the
default ``stage2_lr_ratio = 1/3``; set ``min_lr_ratio = 0`` to decay to 0.
Other schedules use a constant ``weight_decay``.

As in optax/PyTorch AdamW the decay is decoupled and scaled by the LR:
``p ← p - lr_t * (adam_update + wd_t * p)``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from bitjax import config as config_lib

SCHEDULES = ("cosine", "linear", "constant", "two_stage")

# A param is NOT decayed when any component of its path (module or attribute
# name, case-insensitive) contains one of these substrings...
WD_EXCLUDE = ("norm", "scale", "alpha", "beta", "bias", "embed", "qstate")
# ...or when it has fewer than 2 dims (gains, biases, per-channel scalars).
# `weight_decay_params='all'` decays every parameter instead, as PyTorch's AdamW(model.parameters())
# does in FBI-LLM's and Bi-Mamba's reference training (their learnable α, β included); only the frozen
# quantizer state is never decayed (it has no gradient and must stay what init computed).
WD_PARAMS = {"matrices": (WD_EXCLUDE, 2), "all": (("qstate",), 0)}  # name → (exclude, min rank)


def default_config() -> ConfigDict:
    return ConfigDict(
        dict(
            name="adamw",
            lr=1e-3,
            warmup_steps=100,
            schedule="cosine",  # 'cosine' | 'linear' | 'constant' | 'two_stage'
            min_lr_ratio=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            weight_decay_params="matrices",  # 'matrices' (see WD_EXCLUDE) | 'all' (FBI/Bi-Mamba reference)
            grad_clip=1.0,  # global-norm clip; 0 disables
            stage2_frac=0.5,  # two_stage: fraction of total_steps where stage 2 starts
            stage2_lr_ratio=1.0 / 3.0,  # two_stage: stage-2 peak as a fraction of lr
            trainable="",  # '' = every parameter; else a regex: only params whose dotted path it matches train
        )
    )


def validate_config(opt_cfg, total_steps: int, name: str = "config.optim") -> ConfigDict:
    """Validates ``opt_cfg`` (ConfigDict or dict) and returns it as a ConfigDict.

    Raises ``ValueError`` naming the field (``config.optim.<field> = <value>: <why>``).
    """
    cfg = ConfigDict(opt_cfg.to_dict() if hasattr(opt_cfg, "to_dict") else dict(opt_cfg))
    config_lib.check_fields(cfg, default_config(), name, "bitjax.train.optim.default_config()")

    def need(ok, field, why):
        if not ok:
            value = total_steps if field == "total_steps" else cfg.get(field)
            raise ValueError(f"{name}.{field} = {value!r}: {why}")

    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    need(cfg.get("name") == "adamw", "name", "only 'adamw' is implemented")
    need(is_int(total_steps) and total_steps >= 1, "total_steps", "must be an int >= 1")
    need(num(cfg.get("lr")) and cfg.lr > 0, "lr", "must be > 0")
    need(
        is_int(cfg.get("warmup_steps")) and 0 <= cfg.warmup_steps <= total_steps,
        "warmup_steps",
        f"must be an int in [0, total_steps={total_steps}]",
    )
    need(cfg.get("schedule") in SCHEDULES, "schedule", f"must be one of {SCHEDULES}")
    need(num(cfg.get("min_lr_ratio")) and 0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    need(num(cfg.get("b1")) and 0 <= cfg.b1 < 1, "b1", "must be in [0, 1)")
    need(num(cfg.get("b2")) and 0 <= cfg.b2 < 1, "b2", "must be in [0, 1)")
    need(num(cfg.get("eps")) and cfg.eps > 0, "eps", "must be > 0")
    need(num(cfg.get("weight_decay")) and cfg.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(
        cfg.get("weight_decay_params") in WD_PARAMS,
        "weight_decay_params",
        f"must be one of {tuple(WD_PARAMS)}",
    )
    need(num(cfg.get("grad_clip")) and cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
    need(isinstance(cfg.get("trainable"), str), "trainable", "must be a regex string ('' = every parameter)")
    try:
        re.compile(cfg.trainable)
    except re.error as e:
        need(False, "trainable", f"is not a regular expression ({e})")
    if cfg.schedule == "two_stage":
        need(num(cfg.get("stage2_frac")) and 0 < cfg.stage2_frac < 1, "stage2_frac", "must be in (0, 1)")
        t1 = round(cfg.stage2_frac * total_steps)
        need(
            cfg.warmup_steps <= t1,
            "warmup_steps",
            f"must end before stage 2 starts (step {t1} = stage2_frac * total_steps)",
        )
        need(
            num(cfg.get("stage2_lr_ratio")) and cfg.min_lr_ratio <= cfg.stage2_lr_ratio <= 1,
            "stage2_lr_ratio",
            f"must be in [min_lr_ratio={cfg.min_lr_ratio}, 1]",
        )
    return cfg


def make_schedules(
    opt_cfg, total_steps: int, *, name: str = "config.optim"
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """``(lr_fn, wd_fn)``: step → learning rate and step → weight-decay rate (module docstring)."""
    opt_cfg = validate_config(opt_cfg, total_steps, name)
    lr, w, T, m = float(opt_cfg.lr), int(opt_cfg.warmup_steps), int(total_steps), float(opt_cfg.min_lr_ratio)
    kind = opt_cfg.schedule

    def cos(p):
        return 0.5 * (1.0 + jnp.cos(math.pi * p))

    def base_factor(t):  # warmup then the chosen decay, as a fraction of lr
        warm = (t + 1.0) / max(w, 1)
        p = jnp.clip((t - w) / max(T - w, 1), 0.0, 1.0)
        decay = {
            "cosine": lambda: m + (1 - m) * cos(p),
            "two_stage": lambda: m + (1 - m) * cos(p),
            "linear": lambda: m + (1 - m) * (1 - p),
            "constant": lambda: jnp.ones_like(p),
        }[kind]()
        return jnp.where(t < w, warm, decay)

    if kind != "two_stage":
        wd = float(opt_cfg.weight_decay)
        return (lambda t: lr * base_factor(jnp.asarray(t, jnp.float32)), lambda t: jnp.full((), wd, jnp.float32))

    t1 = round(opt_cfg.stage2_frac * T)
    s2, wd = float(opt_cfg.stage2_lr_ratio), float(opt_cfg.weight_decay)

    def lr_fn(t):
        t = jnp.asarray(t, jnp.float32)
        q = jnp.clip((t - t1) / max(T - t1, 1), 0.0, 1.0)
        return lr * jnp.where(t < t1, base_factor(t), m + (s2 - m) * cos(q))

    def wd_fn(t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.where(t < t1, wd * base_factor(t), 0.0)

    return lr_fn, wd_fn


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _decay_fn(exclude: Sequence[str], min_rank: int = 2) -> Callable[[tuple, Any], bool]:
    pat = re.compile("|".join(map(re.escape, exclude)), re.IGNORECASE) if exclude else None

    def decays(path, leaf) -> bool:
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        if len(getattr(value, "shape", ())) < min_rank:
            return False
        return not (pat and any(pat.search(_key_name(k)) for k in path))

    return decays


def weight_decay_mask(params, exclude: Sequence[str] = WD_EXCLUDE, min_rank: int = 2):
    """Bool pytree (a prefix of ``params``): True where weight decay applies.

    Rule: a leaf is decayed iff it has >= `min_rank` (2) dims AND no component of its key
    path contains (case-insensitively) any of ``exclude`` — by default 'norm',
    'scale', 'alpha', 'beta', 'bias', 'embed'. Matching any component (not just
    the leaf's own name) catches e.g. ``input_norm.weight``. 'embed' also
    excludes an ``unembed`` matrix; an ``lm_head`` is decayed.

    ``params`` may be an ``nnx.State`` of Variables (what ``nnx.Optimizer``
    passes to ``tx.init``), the pure arrays it passes to ``tx.update``, or any
    pytree of arrays; the decision depends only on names and ranks, so it is
    static under jit.
    """
    decays = _decay_fn(exclude, min_rank)
    return jax.tree_util.tree_map_with_path(decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def decayed_param_names(params, exclude: Sequence[str] = WD_EXCLUDE, min_rank: int = 2) -> list[str]:
    """Dotted paths of the params that get weight decay (for logging and tests)."""
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    decays = _decay_fn(exclude, min_rank)
    return sorted(".".join(_key_name(k) for k in p) for p, x in leaves if decays(p, x))


def make_optimizer(
    opt_cfg, total_steps: int, *, name: str = "config.optim"
) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """``(tx, lr_schedule)`` for ``opt_cfg`` (see :func:`default_config`).

    ``tx = chain(clip_by_global_norm(grad_clip) [if grad_clip > 0],
    adamw(lr_schedule, b1, b2, eps, weight_decay=wd [schedule for two_stage],
    mask=weight_decay_mask by weight_decay_params))``; with ``trainable`` set, that chain runs on the
    parameters whose path the regex matches and the others get zero updates (:func:`frozen_mask`;
    EfficientQAT's E2E-QP trains only its step sizes). Use it directly with ``nnx.Optimizer(model, tx,
    wrt=nnx.Param)``. Raises ``ValueError`` naming the bad ``config.optim`` field.
    """
    opt_cfg = validate_config(opt_cfg, total_steps, name)
    lr_fn, wd_fn = make_schedules(opt_cfg, total_steps, name=name)
    # A constant wd avoids the extra step counter a schedule needs in the state.
    wd = wd_fn if opt_cfg.schedule == "two_stage" else float(opt_cfg.weight_decay)
    parts = []
    if opt_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip)))
    exclude, min_rank = WD_PARAMS[opt_cfg.weight_decay_params]
    mask = functools.partial(weight_decay_mask, exclude=exclude, min_rank=min_rank)
    parts.append(optax.adamw(lr_fn, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=wd, mask=mask))
    if opt_cfg.trainable:  # the rest frozen: zero gradients (outside the clip's norm), zero updates (no decay)
        freeze = optax.masked(optax.set_to_zero(), lambda params: frozen_mask(opt_cfg.trainable, params, name))
        parts = [freeze, *parts, freeze]
    return optax.chain(*parts), lr_fn


def frozen_mask(pattern: str, params, name: str = "config.optim"):
    """Bool pytree: True (frozen) where regex `pattern` (re.search) does not match the leaf's dotted path
    (``layers.0.self_attn.q_proj.qparams.dstep``). ValueError if it matches no leaf."""
    # a Variable is one leaf; so is optax.tree_map_params's placeholder (an empty NamedTuple for the tree)
    is_leaf = lambda x: isinstance(x, nnx.Variable) or (isinstance(x, tuple) and hasattr(x, "_fields") and not x)
    paths = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)[0]
    dotted = lambda path: ".".join(_key_name(k) for k in path)
    if paths and paths[0][0] and not any(re.search(pattern, dotted(p)) for p, _ in paths):
        some = ", ".join(dotted(p) for p, _ in paths[:3])
        raise ValueError(f"{name}.trainable = {pattern!r} matches no parameter path (they read like {some})")
    return jax.tree_util.tree_map_with_path(lambda p, _: not re.search(pattern, dotted(p)), params, is_leaf=is_leaf)


def train_state(tx: optax.GradientTransformation, params, step=0) -> dict:
    """A run's train state as the trainer starts it: {step (int32), params, opt_state = tx.init(params),
    skipped = 0}. Tools that write a run (ptq, convert, import_hf) start from it too, so the trainer resumes
    their output as its own."""
    return {
        "step": jnp.asarray(step, jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "skipped": jnp.zeros((), jnp.int32),
    }
