"""The one trainer: sharded init, jitted step, eval, checkpoints, metrics.

It knows nothing about model type or quantization: a model is any Flax NNX
module registered in `bitjax.models` that maps int32 tokens [B, L] to logits
[B, L, V]. Data batches are a pure function of (seed, step), so resuming needs
only the step stored in the checkpoint. With config.distill, another run's model (any family) is a
frozen teacher inside the same jitted step (bitjax.train.distill); `load_run` loads it, as it does
config.init_from's parameters.

Sections: setup → state & shardings → steps → restore → loop. Beside it: metrics.py (metrics.jsonl,
TensorBoard, progress), resume.py (fingerprints, resume checks, the workdir lock), guards.py
(preemption, skip watch).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from bitjax import config as config_lib
from bitjax import errors, models
from bitjax.data import pipeline as data_lib
from bitjax.nn import layer_stack
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import config as train_config
from bitjax.run import mesh as mesh_lib
from bitjax.train import distill, distributed, guards, optim, resume
from bitjax.train.metrics import MetricsWriter, Progress, last_logged

log = logging.getLogger("bitjax")
VOCAB_MULTIPLE = 128


# ============================================================================ state
def same_tree(a, b) -> bool:
    """Whether two parameter trees have the same structure, shapes and dtypes (values aside)."""
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
    return jax.tree.structure(a) == jax.tree.structure(b) and shapes(a) == shapes(b)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """(sum of masked token NLL in nats, number of masked tokens); logits [B, L, V] any float."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask), jnp.sum(mask)


def _get_datasets_once(dcfg, pi: int, pc: int):
    """Process 0 builds/tokenizes the corpus first; the others then read its caches (no build race)."""
    if pc == 1:
        return data_lib.get_datasets(dcfg)
    from jax.experimental import multihost_utils

    out = data_lib.get_datasets(dcfg) if pi == 0 else None
    multihost_utils.sync_global_devices("bitjax_data_ready")
    return out if pi == 0 else data_lib.get_datasets(dcfg)


class TrainStep:
    """A jitted step(state, batch, teacher_params) used as step(state, batch): the frozen teacher's
    parameters ({} without one) are passed along each call, never donated, never checkpointed."""

    def __init__(self, jitted, teacher_params):
        self.jitted, self.teacher_params = jitted, teacher_params

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.teacher_params)

    def trace(self, state, batch):
        return self.jitted.trace(state, batch, self.teacher_params)

    def lower(self, state, batch):
        return self.jitted.lower(state, batch, self.teacher_params)


class Setup:
    """Everything derived from a config before the loop: mesh, data, model, optimizer, jitted fns."""

    def __init__(self, config: ConfigDict, devices=None):
        self.config = config
        self.mesh = mesh_lib.make_mesh(config.mesh, devices)
        self.rules = mesh_lib.rules_from_config(config.axis_rules)
        self.pi, self.pc = jax.process_index(), jax.process_count()
        with errors.as_user_errors():  # every ValueError up to here is about the config or the data
            self._check(config)

    def _check(self, config: ConfigDict):
        """Validates the config, opens the data, builds the model abstractly and traces the train step."""
        train_config.validate(config, self.mesh, self.pc)

        # ---- data (fails with a DataError on bad input, before any compile)
        dcfg = ConfigDict(
            {**config.data.to_dict(), "batch_size": config.batch_size, "seq_len": config.seq_len, "seed": config.seed}
        )
        self.train_data, self.eval_data, self.tokenizer = _get_datasets_once(dcfg, self.pi, self.pc)
        mcfg = config.model
        with mcfg.unlocked():
            if mcfg.get("vocab_size") in (None, 0):
                # padded to a multiple of 128 so the vocab axis shards evenly and matmuls tile well;
                # the padding ids never occur as targets
                mcfg.vocab_size = -(-self.tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        if mcfg.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(
                f"config.model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}; set it to None to use the tokenizer's size"
            )

        # ---- model: abstract first, so shapes are checked against the mesh before compiling.
        # A method trained in stages (a48 after b158) has one model config per stage, all sharing
        # one parameter tree; the stage is a function of the step alone, so resume is exact.
        model_cls = models.get_model(mcfg.name)
        self.stages = models.stage_configs(mcfg, config.total_steps)
        builds = [lambda key, c=c: model_cls(c, rngs=nnx.Rngs(params=key)) for _, c in self.stages]
        self.build = builds[-1]
        splits = [nnx.split(nnx.eval_shape(lambda b=b: b(jax.random.key(0)))) for b in builds]
        self.graphdefs = [graphdef for graphdef, _ in splits]
        abstract_params = splits[-1][1]
        for (start, c), (_, other) in zip(self.stages, splits):
            if not same_tree(other, abstract_params):
                raise ValueError(
                    f"config.model.quant.stage1={c.quant.method!r} (steps from {start}) has other "
                    f"parameters than config.model.quant.method={mcfg.quant.method!r}: both "
                    f"stages must share one parameter tree; choose another stage1 or 'none'"
                )
        self.graphdef = self.graphdefs[-1]
        self.quant_table = models.describe(mcfg)
        mesh_lib.check_divisible(abstract_params, self.mesh, self.rules, hints=models.size_hints(mcfg.name))
        self.tx, self.lr_fn = optim.make_optimizer(config.optim, config.total_steps)

        # ---- teacher (config.distill): another run's model (any family), frozen, sharded on this mesh by
        # these rules; its tokenizer and vocabulary are checked against this run's before anything loads
        self.teacher: Run | None = None
        if config.distill.teacher_workdir:
            now_fp = resume.data_fingerprint(config.data, self.tokenizer.name)
            check = lambda meta: distill.check_teacher(
                config.distill.teacher_workdir,
                meta.get("data") or resume.data_fingerprint(meta["config"]["data"]),
                meta["config"]["model"].get("vocab_size"),
                now_fp,
                mcfg.vocab_size,
            )
            self.teacher = load_run(
                config.distill.teacher_workdir, self.mesh, self.rules, "config.distill.teacher_workdir", check
            )

        param_sh = nnx.to_pure_dict(mesh_lib.param_shardings(abstract_params, self.mesh, self.rules))
        abstract_pure = nnx.to_pure_dict(abstract_params)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_pure)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        opt_sh = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, param_sh, transform_non_params=lambda _: replicated
        )
        self.state_sharding = {"step": replicated, "params": param_sh, "opt_state": opt_sh, "skipped": replicated}
        self.abstract_state = {
            "step": jax.ShapeDtypeStruct((), jnp.int32),
            "params": abstract_pure,
            "opt_state": abstract_opt,
            "skipped": jax.ShapeDtypeStruct((), jnp.int32),
        }
        self.batch_sharding = mesh_lib.batch_sharding(self.mesh, self.rules)
        self.teacher_params = {} if self.teacher is None else self.teacher.params  # {}: no teacher
        self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_pure))
        self._jit()
        # Trace (no compile) each stage's train step on abstract inputs: a model error that only shows when the
        # model runs (e.g. a quantizer group size that does not divide a weight) is reported now, before
        # the workdir is touched. jit caches the trace, so the first real step does not trace again.
        batch = {
            k: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), dt, sharding=self.batch_sharding)
            for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
        }
        state = ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_sharding)
        for train_step in self.train_steps:
            train_step.trace(state, batch)

    # ------------------------------------------------------------------------ steps
    def _jit(self):
        tx, lr_fn = self.tx, self.lr_fn
        skip_nonfinite = self.config.nonfinite == "skip"
        dcfg, teacher_graphdef = self.config.distill, self.teacher and self.teacher.graphdef

        def init(key):
            params = nnx.to_pure_dict(nnx.state(self.build(key)))
            return {
                "step": jnp.zeros((), jnp.int32),
                "params": params,
                "opt_state": tx.init(params),
                "skipped": jnp.zeros((), jnp.int32),
            }

        def make_steps(graphdef):
            def loss_fn(params, batch, teacher_params):
                """(the loss minimised, its parts): label CE, or with a teacher (1 − w)·distill + w·label CE."""
                logits = nnx.merge(graphdef, params)(batch["inputs"])
                total, count = cross_entropy(logits, batch["targets"], batch["mask"])
                label = total / jnp.maximum(count, 1.0)
                if teacher_graphdef is None:
                    return label, {}
                teacher_logits = nnx.merge(teacher_graphdef, teacher_params)(batch["inputs"])  # frozen: no grad
                total, count = distill.loss(logits, teacher_logits, batch["mask"], dcfg.loss, dcfg.temperature)
                dist = total / jnp.maximum(count, 1.0)
                w = dcfg.label_weight
                return (1.0 - w) * dist + w * label, {"label_loss": label, "distill_loss": dist}

            def train_step(state, batch, teacher_params):
                (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, teacher_params)
                grad_norm = optax.tree.norm(grads)
                updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
                params = optax.apply_updates(state["params"], updates)
                finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                if skip_nonfinite:  # drop the whole update (params and moments) on a bad step
                    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
                    params, opt_state = keep(params, state["params"]), keep(opt_state, state["opt_state"])
                new = {
                    "step": state["step"] + 1,
                    "params": params,
                    "opt_state": opt_state,
                    "skipped": state["skipped"] + (~finite).astype(jnp.int32),
                }
                return new, {
                    "train_loss": loss,
                    **parts,
                    "grad_norm": grad_norm,
                    "lr": lr_fn(state["step"]),
                    "finite": finite,
                }

            def eval_step(params, batch):
                model = nnx.merge(graphdef, params)
                return cross_entropy(model(batch["inputs"]), batch["targets"], batch["mask"])

            repl = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            teacher_sh = jax.tree.map(lambda x: x.sharding, self.teacher_params)
            return (
                jax.jit(
                    train_step,
                    in_shardings=(self.state_sharding, self.batch_sharding, teacher_sh),
                    out_shardings=(self.state_sharding, repl),
                    donate_argnums=0,
                ),
                jax.jit(
                    eval_step, in_shardings=(self.state_sharding["params"], self.batch_sharding), out_shardings=repl
                ),
            )

        self.init_fn = jax.jit(init, out_shardings=self.state_sharding)
        train_jits, self.eval_steps = zip(*map(make_steps, self.graphdefs))
        self.train_steps = tuple(TrainStep(f, self.teacher_params) for f in train_jits)
        self.train_step, self.eval_step = self.train_steps[-1], self.eval_steps[-1]  # the final stage's

    def stage_at(self, step: int) -> int:
        """Index of the stage that trains step `step` (0-based) and evaluates after `step` steps."""
        return max(i for i, (start, _) in enumerate(self.stages) if start <= step)

    # ------------------------------------------------------------------------ helpers
    def global_batch(self, np_batch) -> dict[str, jax.Array]:
        return mesh_lib.shard_batch(np_batch, self.mesh, self.rules)

    def train_batch(self, step: int):
        return self.global_batch(self.train_data.batch(step, self.pi, self.pc))

    def evaluate(self, params, step: int | None = None) -> dict[str, float]:
        """Held-out loss of the model as trained at `step` (None: the final stage's model)."""
        eval_step = self.eval_steps[-1 if step is None else self.stage_at(step)]
        total, count = 0.0, 0.0
        for b in self.eval_data.batches(self.pi, self.pc):
            t, c = eval_step(params, self.global_batch(b))
            total, count = total + float(t), count + float(c)
        loss = total / max(count, 1.0)
        return {
            "eval_loss": loss,
            "eval_ppl": math.exp(min(loss, 50.0)),
            "eval_bpb": self.eval_data.bits_per_byte(loss),
        }

    def model(self, params):
        """A concrete NNX model holding `params` (for sampling and export)."""
        return nnx.merge(self.graphdef, params)


def describe_stages(setup: Setup) -> str:
    """The quantization recipe in force: per stage a 'quantization from step S: method M' line, then
    one 'role: spec' line per layer role (printed at start; the table is stored with checkpoints)."""
    lines = []
    for start, cfg in setup.stages:
        lines.append(
            f"quantization from step {start}: method {cfg.quant.method}"
            + (f", rules {cfg.quant.rules!r}" if cfg.quant.rules else "")
        )
        lines += [f"  {role:>10}: {spec}" for role, spec in models.describe(cfg).items()]
    return "\n".join(lines)


class Run(NamedTuple):
    """Another run's model as `load_run` restores it: frozen parameters and what runs them."""

    workdir: str
    step: int  # of the checkpoint restored
    config: ConfigDict  # its stored config, completed with today's defaults
    graphdef: Any  # its model as trained at `step` (the stage in force then)
    params: Any  # pure dict of jax.Arrays, sharded on the caller's mesh by its rules


def load_run(workdir: str, mesh, rules, field: str, check=None) -> Run:
    """`workdir`'s latest checkpoint as a :class:`Run`: parameters only (no optimizer state is read).

    The model (any registered family) comes from the config stored with the checkpoint; its
    parameters are placed on `mesh` by `rules` (logical axes → mesh axes), like this run's own.
    field: the config field that named `workdir` (for errors). check(meta): called on the
    checkpoint's metadata before anything else loads (raise UserError to refuse the run).
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise errors.UserError(
            f"{field}={workdir!r} holds no checkpoints/ (the workdir of a bitjax run, or "
            "one written by python -m bitjax.import_hf, is expected)"
        )
    ckpt = ckpt_lib.Checkpointer(ckpt_dir)  # the directory exists: orbax creates nothing
    try:
        step = ckpt.latest_step()
        if step is None:
            raise errors.UserError(
                f"{field}={workdir!r} holds no finished checkpoint in {ckpt_dir}: "
                "train that run first (or name another)"
            )
        meta = ckpt.restore_metadata(step)
        if check is not None:
            check(meta)
        config = train_config.with_defaults(meta["config"])
        try:
            models.validate(config.model)
            stages = models.stage_configs(config.model, config.total_steps)
        except ValueError as e:
            raise errors.UserError(f"{field}={workdir!r}: its stored model config is invalid today: {e}") from None
        mcfg = stages[max(i for i, (start, _) in enumerate(stages) if start <= step)][1]
        model_cls = models.get_model(mcfg.name)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_cls(mcfg, rngs=nnx.Rngs(params=0))))
        mesh_lib.check_divisible(abstract, mesh, rules, hints=models.size_hints(mcfg.name))
        shardings = nnx.to_pure_dict(mesh_lib.param_shardings(abstract, mesh, rules))
        params = ckpt.restore_params(step, ckpt_lib.abstract_with_shardings(nnx.to_pure_dict(abstract), shardings))
    finally:
        ckpt.close()
    return Run(workdir, step, config, graphdef, params)


def params_from_run(workdir: str, setup: Setup):
    """Parameters of `workdir`'s latest checkpoint, placed with `setup`'s shardings (config.init_from).

    The source run is restored with its own stored config (its optimizer may differ); its parameter
    tree must equal this run's (same model shapes; the quantization method may differ, e.g. QAT of an
    imported fp model); per-layer and stacked (config.model.scan_layers) layouts are converted.
    """
    params = load_run(workdir, setup.mesh, setup.rules, "config.init_from").params
    want = setup.abstract_state["params"]
    params = layer_stack.layers_like(params, want)
    if not same_tree(params, want):
        raise errors.UserError(
            f"config.init_from={workdir!r}: its parameters differ from this run's model "
            "(config.model shapes and learned quantizer parameters must match the "
            "source run's)"
        )
    return jax.device_put(params, setup.state_sharding["params"])


# ============================================================================ loop
def train(config: ConfigDict, workdir: str, *, devices=None, stop_after: int | None = None) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its latest checkpoint); returns the final metrics.

    devices: the devices of the mesh (default: all). stop_after: leave (with a checkpoint) after this
    many steps of this invocation, as a preemption would; the run can be resumed later.
    """
    setup = Setup(config, devices)  # validates everything before touching the workdir
    lock = resume.lock_workdir(workdir, setup.pi == 0, setup.pc)  # a second run on a live workdir stops here
    try:
        ckpt = ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            keep=config.keep_checkpoints,
            save_every=max(config.checkpoint_every, 1),
        )
        try:
            return _run(setup, config, workdir, ckpt, stop_after)
        finally:
            ckpt.wait()  # whatever stopped the run, a save in flight is finished, never left half-written
            ckpt.close()
    finally:
        if lock is not None:
            lock.release()


def _run(
    setup: Setup, config: ConfigDict, workdir: str, ckpt: ckpt_lib.Checkpointer, stop_after: int | None
) -> dict[str, Any]:
    lead = setup.pi == 0
    meta = {
        "config": config_lib.to_dict(config),
        "data": resume.data_fingerprint(config.data, setup.tokenizer.name),
        "quant_recipe": setup.quant_table,
    }
    if setup.teacher is not None:  # which teacher checkpoint: a resume must distill from the same one
        meta["teacher_step"] = setup.teacher.step
    restore_target = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_sharding)
    if ckpt.latest_step() is not None:
        saved_meta = ckpt.restore_metadata()
        resume.check_compatible(config, saved_meta, workdir, setup.tokenizer.name)
        resume.check_same_teacher(config, saved_meta, meta.get("teacher_step"), workdir)
        step0, state = ckpt.restore_latest(restore_target)
        if lead:
            print(f"resumed from {workdir} at step {step0}")
    else:
        state = setup.init_fn(jax.random.key(config.seed))
        if config.init_from:
            state["params"] = params_from_run(config.init_from, setup)
            state["opt_state"] = jax.jit(setup.tx.init, out_shardings=setup.state_sharding["opt_state"])(
                state["params"]
            )
            if lead:
                print(f"initialised from {config.init_from} (its latest checkpoint's parameters)")
    start = int(state["step"])
    if lead:
        print(
            f"model {config.model.name} ({config.model.quant.method}): {setup.num_params / 1e6:.2f}M params; "
            f"mesh {dict(setup.mesh.shape)}; {config.total_steps} steps × {config.batch_size}×{config.seq_len} tokens"
        )
        print(describe_stages(setup))
        if setup.teacher is not None:
            d = config.distill
            print(
                f"distilling from {d.teacher_workdir} (step {setup.teacher.step}, model "
                f"{setup.teacher.config.model.name} {setup.teacher.config.model.quant.method}): loss {d.loss}, "
                f"temperature {d.temperature:g}, label_weight {d.label_weight:g}"
            )

    if start >= config.total_steps:  # already finished: report, do not train further
        last = last_logged(workdir)
        last.update(setup.evaluate(state["params"]))
        last.update(step=start, step_time_s=last.get("step_time_s", float("nan")))
        if lead:
            print(f"{workdir} already holds a finished run ({start} steps); evaluated it again")
        return last

    writer = MetricsWriter(workdir, lead, start)
    skip_watch = guards.SkipWatch(config, lead)
    progress = Progress(config.total_steps, start, lead)
    tokens_per_step = config.batch_size * config.seq_len
    last: dict[str, Any] = {}
    t_log, steps_since, first_interval = time.perf_counter(), 0, True
    step_times = []
    with guards.Preemption() as preempt:
        for step in range(start, config.total_steps):
            state, m = setup.train_steps[setup.stage_at(step)](state, setup.train_batch(step))
            done = step + 1
            skip_watch(done, m["finite"])
            steps_since += 1
            is_last = done == config.total_steps
            eval_now = bool(config.eval_every and done % config.eval_every == 0) or is_last
            log_now = (
                done % config.log_every == 0
                or eval_now  # an eval is always written with its step
                or (setup.pc == 1 and preempt.requested)
                or (stop_after is not None and done - start >= stop_after)
            )
            if config.nonfinite == "stop" and not bool(m["finite"]):
                ckpt.wait()
                good = ckpt.latest_step()
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {done}; stopped (config.nonfinite='stop'). "
                    + (
                        f"The last good checkpoint in {workdir} is intact (step {good})."
                        if good is not None
                        else f"No checkpoint had been written yet (config.checkpoint_every={config.checkpoint_every}), "
                        f"so the run restarts from step 0."
                    )
                )
            if log_now:
                m = jax.device_get(m)
                dt = time.perf_counter() - t_log
                last = {
                    "train_loss": float(m["train_loss"]),
                    **{k: float(m[k]) for k in ("label_loss", "distill_loss") if k in m},  # with a teacher
                    "lr": float(m["lr"]),
                    "grad_norm": float(m["grad_norm"]),
                    "tokens_per_s": steps_since * tokens_per_step / dt,
                    "skipped_steps": int(state["skipped"]),
                }
                if not first_interval:  # the first interval includes compilation
                    step_times.append(dt / steps_since)
                t_log, steps_since, first_interval = time.perf_counter(), 0, False
                limit = train_config.max_skipped_steps(config)
                if last["skipped_steps"] > limit:
                    raise FloatingPointError(
                        f"{last['skipped_steps']} of {done} steps skipped for non-finite values (more than "
                        f"{limit}, config.max_skipped_steps={config.max_skipped_steps}); stopping."
                    )
            if stop_after is not None and done - start >= stop_after:
                preempt.requested = True
            if setup.pc == 1:
                stop = preempt.requested
            else:  # processes get SIGTERM at different steps: all stop at the next log step after any
                # did, or the others would wait forever in the following step's collectives
                stop = log_now and distributed.any_process(preempt.requested)
            # save before evaluating: a crash in eval must not lose the steps since the last checkpoint
            saved = (config.checkpoint_every and done % config.checkpoint_every == 0) or is_last or stop
            if saved:
                ckpt.save(done, state, meta, force=True)
                t_log = time.perf_counter()
            if eval_now:
                try:
                    last.update(setup.evaluate(state["params"], done))
                except BaseException:  # a mid-run eval between checkpoints: keep the trained steps
                    if not saved:
                        ckpt.save(done, state, meta, force=True)
                    raise
                t_log = time.perf_counter()  # throughput counts training steps only
            if log_now:
                writer.write(done, last)
                msg = f"loss {last['train_loss']:.4f}"
                if eval_now:
                    msg += f" eval_bpb {last['eval_bpb']:.4f}"
                if last["skipped_steps"]:
                    msg += f" skipped {last['skipped_steps']}"
                progress.update(done, f"{msg} | {last['tokens_per_s'] / 1e3:.1f}k tok/s", force_line=True)
            if stop:
                break
    skip_watch()
    writer.close()
    last["step"] = int(state["step"])
    last["step_time_s"] = float(np.median(step_times)) if step_times else float("nan")
    return last
