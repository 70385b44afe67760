"""A run's config: defaults of every field the trainer reads, validation, stored configs completed.

A config file starts from :func:`trainer_config` and sets `config.model` to a family's
(bitjax.models.preset / default_config); bitjax.config has the helpers config files share.
Everything here runs before any data is built or anything compiles, so a bad
field fails in seconds with a message naming it.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import ConfigDict

from bitjax import config as config_lib
from bitjax.data import config as data_defaults
from bitjax.run import mesh as mesh_lib
from bitjax.train import distill, optim

NONFINITE_POLICIES = ("skip", "stop")


def trainer_config() -> ConfigDict:
    """Defaults of everything the trainer reads; a model config is added under `model`.

    total_steps, batch_size (global), seq_len, seed: the run. data: see
    bitjax.data.config (less batch_size/seq_len/seed, which are the top-level
    fields above). mesh: axis sizes {data, fsdp, tensor}, -1 = the rest.
    axis_rules: logical axis → mesh axes. optim: bitjax.train.optim.
    log_every / eval_every / checkpoint_every: in steps (0 disables eval/ckpt
    except at the end). keep_checkpoints: how many to keep. nonfinite:
    'skip' (drop the update, count it, warn) or 'stop' (stop; the last good
    checkpoint stays). With 'skip', the run stops when more than
    max_skipped_steps steps were skipped in all (None: a tenth of total_steps)
    or more than max_consecutive_skips in a row.
    init_from: '' or a workdir (e.g. one written by `python -m bitjax.import_hf`) whose latest
    checkpoint's parameters start a new run (fresh optimizer state, step 0); used only when the
    run's own workdir holds no checkpoint. (Stored configs that predate a field load through
    :func:`with_defaults`.)
    distill: autoregressive distillation from another run (off while distill.teacher_workdir is ''),
    see bitjax.train.distill.
    loss_vocab_chunk: 0, or C > 0: the train and eval loss take the output head's matmul C vocabulary
    columns at a time (bitjax.run.plan.chunked_cross_entropy), so [B, L, V] float32 logits never exist.
    """
    c = ConfigDict()
    c.total_steps = 300
    c.batch_size = 16
    c.seq_len = 128
    c.seed = 0
    c.data = data_defaults.default_config()
    for key in ("batch_size", "seq_len", "seed"):  # one place for each: the top-level fields
        del c.data[key]
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.axis_rules = mesh_lib.rules_to_config(mesh_lib.DEFAULT_RULES)
    c.optim = optim.default_config()
    c.log_every = 25
    c.eval_every = 0
    c.checkpoint_every = 0
    c.keep_checkpoints = 3
    c.nonfinite = "skip"
    c.max_skipped_steps = ml_collections.config_dict.placeholder(int)
    c.max_consecutive_skips = 10
    c.init_from = ""
    c.distill = distill.default_config()
    c.loss_vocab_chunk = 0
    return c


def preset(
    arg: str | None, family: str, run: dict, *, quant: str, cpu_sizes: tuple[str, ...] = ("tiny",)
) -> tuple[ConfigDict, ConfigDict]:
    """The shared body of a model family's `configs/<name>.py:get_config(arg)`: (config, parsed arg).

    arg: 'quant=…,size=…,steps=…' (defaults: `quant`, 'tiny', 0 = the size's steps). config.model is the
    family's preset at that size (bitjax.models.preset) with vocab_size None (the tokenizer's) and
    quant.method = quant. run[size] = (total_steps, batch_size, seq_len, peak lr, warmup steps at that
    total_steps). Warmup is the same fraction of any run length (a lazy reference: --config.total_steps=20
    gets 2 steps of tiny's 30 of 300, and short runs stay valid); --config.optim.warmup_steps=N sets it
    outright. `cpu_sizes` (short runs on the embedded corpus) evaluate every 100 steps on 16 batches in
    float32; larger sizes run in bfloat16 and log/evaluate/checkpoint on a slower cadence.
    """
    from bitjax import models  # the family's presets (models imports nothing from here)

    arg = config_lib.parse_arg(arg, quant=quant, size="tiny", steps=0)
    if arg.size not in run:
        raise ValueError(f"unknown size {arg.size!r}; choose one of {sorted(run)}")
    config = trainer_config()
    steps, config.batch_size, config.seq_len, config.optim.lr, warmup = run[arg.size]
    config.total_steps = arg.steps or steps
    config.optim.warmup_steps = config.get_ref("total_steps") * warmup // steps
    config.model = models.preset(family, arg.size)
    config.model.vocab_size = None  # None → the tokenizer's vocabulary size
    config.model.quant.method = arg.quant
    if arg.size in cpu_sizes:
        config.eval_every = 100
        config.data.eval_batches = 16
    else:
        config.eval_every, config.checkpoint_every, config.log_every = 1000, 1000, 50
        config.model.dtype = "bfloat16"
    return config, arg


def data_config(config: ConfigDict) -> ConfigDict:
    """config.data as bitjax.data takes it: with the run's batch_size, seq_len and seed (top-level fields)."""
    return ConfigDict(
        {**config.data.to_dict(), "batch_size": config.batch_size, "seq_len": config.seq_len, "seed": config.seed}
    )


def max_skipped_steps(config: ConfigDict) -> int:
    """config.max_skipped_steps, or by default a tenth of the run: 8 of 10 steps skipped is no run."""
    return config.max_skipped_steps if config.max_skipped_steps is not None else max(config.total_steps // 10, 1)


def with_defaults(saved: dict) -> ConfigDict:
    """A config stored with a checkpoint, completed with today's defaults for fields added since.

    Fields the stored config has win; fields it lacks (a trainer, data or model field added after the
    run was written) take their defaults, so an older run still loads. Fields that no longer exist
    are kept, so validation still names them. A field whose default is a tuple (data.paths) is a tuple
    again, as in a fresh config, so a config built on it still takes `--config.data.paths=FILE`.
    """
    from bitjax import models  # the model family's own defaults

    base = trainer_config().to_dict()
    base["model"] = models.default_config(saved.get("model", {}).get("name", "transformer")).to_dict()

    def merge(default, stored):
        if isinstance(default, tuple) and isinstance(stored, list):
            return tuple(stored)  # JSON stored the tuple as a list: a list field can't be set from the command line
        if not (isinstance(default, dict) and isinstance(stored, dict)):
            return stored
        return {**default, **{k: merge(default.get(k), v) for k, v in stored.items()}}

    return ConfigDict(merge(base, saved))


def _need(ok: bool, field: str, value, fix: str):
    if not ok:
        raise ValueError(f"config.{field}={value!r} is invalid: {fix}")


def validate(config: ConfigDict, mesh, process_count: int = 1) -> None:
    """Checks every trainer field (and the model's, via its own validator) before anything runs."""
    config_lib.check_fields(config, {**trainer_config(), "model": None}, "config", "bitjax.run.config.trainer_config()")
    for field in ("total_steps", "batch_size", "seq_len"):
        v = config[field]
        _need(isinstance(v, int) and v > 0, field, v, "must be a positive int")
    _need(isinstance(config.seed, int) and config.seed >= 0, "seed", config.seed, "must be an int ≥ 0")
    for field in ("log_every", "eval_every", "checkpoint_every"):
        v = config[field]
        _need(isinstance(v, int) and v >= 0, field, v, "must be an int ≥ 0 (0 = only at the end)")
    _need(config.log_every > 0, "log_every", config.log_every, "must be ≥ 1")
    _need(
        isinstance(config.keep_checkpoints, int) and config.keep_checkpoints >= 1,
        "keep_checkpoints",
        config.keep_checkpoints,
        "must be an int ≥ 1",
    )
    _need(config.nonfinite in NONFINITE_POLICIES, "nonfinite", config.nonfinite, f"choose one of {NONFINITE_POLICIES}")
    v = config.max_skipped_steps
    _need(
        v is None or (isinstance(v, int) and v >= 0),
        "max_skipped_steps",
        v,
        "must be an int ≥ 0, or None (a tenth of total_steps)",
    )
    v = config.max_consecutive_skips
    _need(isinstance(v, int) and v >= 0, "max_consecutive_skips", v, "must be an int ≥ 0")
    v = config.loss_vocab_chunk
    _need(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0, "loss_vocab_chunk", v, "must be an int ≥ 0 (0 = off)"
    )
    _need(
        not (v and config.distill.teacher_workdir),
        "loss_vocab_chunk",
        v,
        "distillation reads the whole logits: set it to 0 with config.distill.teacher_workdir",
    )
    v = config.data.eval_batches
    _need(
        isinstance(v, int) and (v == -1 or v >= 1),
        "data.eval_batches",
        v,
        "must be ≥ 1, or -1 for the whole validation split",
    )
    rules = mesh_lib.rules_from_config(config.axis_rules)
    batch_axes = dict(rules).get("batch")
    axes = () if batch_axes is None else ((batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes))
    dp = 1
    for a in axes:
        dp *= mesh.shape[a]
    _need(
        config.batch_size % dp == 0,
        "batch_size",
        config.batch_size,
        f"must be divisible by the data-parallel size {dp} (mesh axes {axes} of "
        f"{dict(mesh.shape)}); change config.batch_size or config.mesh",
    )
    _need(
        config.batch_size % process_count == 0,
        "batch_size",
        config.batch_size,
        f"must be divisible by the number of processes ({process_count})",
    )
    init_from = config.init_from
    _need(isinstance(init_from, str), "init_from", init_from, "must be '' or a run's workdir (a string)")
    _need(
        not init_from or os.path.isdir(os.path.join(init_from, "checkpoints")),
        "init_from",
        init_from,
        "holds no checkpoints/: name a bitjax run's workdir (e.g. one from python -m bitjax.import_hf)",
    )
    optim.validate_config(config.optim, config.total_steps)
    distill.validate_config(config.distill)
    from bitjax import models  # the model validates its own fields

    models.validate(config.model)
