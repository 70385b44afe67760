"""The one trainer: a run's plan + data + optimizer + compiled steps, and the loop.

It knows nothing about model type or quantization: a model is any Flax NNX module registered in
`bitjax.models` that maps int32 tokens [B, L] to logits [B, L, V]; the config is resolved into a plan
(bitjax.run.plan: stages, model, shardings, tokenizer). Data batches are a pure function of (seed, step),
so resuming needs only the step stored in the checkpoint. With config.distill, another run's model (any
family) is a frozen teacher inside the same jitted step (bitjax.train.distill).

Reads top to bottom: Setup (everything checked and traced before the workdir is touched) → train (lock,
checkpointer) → _run (restore or init, then the loop: step, log, checkpoint, evaluate, stop).
Beside it: metrics.py (metrics.jsonl, TensorBoard, progress), resume.py (fingerprints, resume checks,
the workdir lock), guards.py (preemption, skip watch).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from bitjax import config as config_lib
from bitjax import errors
from bitjax.data import pipeline as data_lib
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import config as run_config
from bitjax.run import mesh as mesh_lib
from bitjax.run import plan as plan_lib
from bitjax.train import distill, distributed, guards, optim, resume
from bitjax.train.metrics import MetricsWriter, Progress, last_logged

log = logging.getLogger("bitjax")


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
    """A run's plan + data + optimizer + compiled steps: everything derived from a config before the loop.

    The plan's fields are also attributes (config, mesh, rules, tokenizer, stages, graphdefs, graphdef,
    quant_table, num_params, batch_sharding); config is the plan's (vocab_size resolved).
    """

    def __init__(self, config: ConfigDict, devices=None, *, data: bool = True):
        self.pi, self.pc = jax.process_index(), jax.process_count()
        with errors.as_user_errors():  # every ValueError up to here is about the config or the data
            self._check(config, devices, data)

    def _check(self, config: ConfigDict, devices, data: bool = True):
        """Validates the config, opens the data, resolves the plan and traces the train step.

        data=False (bitjax.aot: compile only) opens no data; config.model.vocab_size must then be set.
        """
        mesh = mesh_lib.make_mesh(config.mesh, devices)
        run_config.validate(config, mesh, self.pc)
        # data: fails with a DataError on bad input, before any compile
        self.train_data, self.eval_data, tokenizer = (
            _get_datasets_once(run_config.data_config(config), self.pi, self.pc) if data else (None, None, None)
        )
        self.plan = plan = plan_lib.resolve(config, tokenizer, mesh=mesh)
        self.config, self.mesh, self.rules, self.tokenizer = plan.config, plan.mesh, plan.rules, plan.tokenizer
        self.stages, self.graphdefs, self.graphdef = plan.stages, plan.graphdefs, plan.graphdef
        self.quant_table, self.num_params, self.batch_sharding = plan.quant_table, plan.num_params, plan.batch_sharding
        config = plan.config  # from here on: vocab_size resolved
        self.tx, self.lr_fn = optim.make_optimizer(config.optim, config.total_steps)

        # teacher (config.distill): another run's model (any family), frozen, sharded on this mesh by
        # these rules; its tokenizer and vocabulary are checked against this run's before anything loads
        self.teacher: plan_lib.Run | None = None
        if config.distill.teacher_workdir:
            now_fp = resume.data_fingerprint(config.data, tokenizer.name)
            check = lambda meta: distill.check_teacher(
                config.distill.teacher_workdir,
                meta.get("data") or resume.data_fingerprint(meta["config"]["data"]),
                meta["config"]["model"].get("vocab_size"),
                now_fp,
                config.model.vocab_size,
            )
            self.teacher = plan_lib.load_run(
                config.distill.teacher_workdir, self.mesh, self.rules, "config.distill.teacher_workdir", check
            )

        param_sh = plan.param_shardings
        abstract_pure = nnx.to_pure_dict(plan.abstract_params)
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
        self.teacher_params = {} if self.teacher is None else self.teacher.params  # {}: no teacher
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

    def _jit(self):
        tx, lr_fn = self.tx, self.lr_fn
        skip_nonfinite = self.config.nonfinite == "skip"
        dcfg, teacher_graphdef = self.config.distill, self.teacher and self.teacher.graphdef
        vocab_chunk = self.config.get("loss_vocab_chunk", 0)

        def init(key):
            params = nnx.to_pure_dict(nnx.state(self.plan.build(key)))
            return optim.train_state(tx, params)

        def make_train_step(graphdef):
            def loss_fn(params, batch, teacher_params, step):
                """(the loss minimised, its parts): label CE, or with a teacher (1 − w)·distill + w·label CE."""
                model = nnx.merge(graphdef, params)
                with self.plan.quant_warmup(step):  # λ from the state's step: the student only, never the teacher
                    if teacher_graphdef is None:  # vocabulary-chunked with config.loss_vocab_chunk
                        total, count = plan_lib.loss_sums(model, batch, vocab_chunk)
                        return total / jnp.maximum(count, 1.0), {}
                    logits = model(batch["inputs"])  # distillation reads the whole distribution
                total, count = plan_lib.cross_entropy(logits, batch["targets"], batch["mask"])
                label = total / jnp.maximum(count, 1.0)
                teacher_logits = nnx.merge(teacher_graphdef, teacher_params)(batch["inputs"])  # frozen: no grad
                total, count = distill.loss(logits, teacher_logits, batch["mask"], dcfg.loss, dcfg.temperature)
                dist = total / jnp.maximum(count, 1.0)
                w = dcfg.label_weight
                return (1.0 - w) * dist + w * label, {"label_loss": label, "distill_loss": dist}

            def train_step(state, batch, teacher_params):
                with self.plan.logical_rules():  # the models' activation constraints, on this mesh
                    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
                    (loss, parts), grads = grad_fn(state["params"], batch, teacher_params, state["step"])
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

            repl = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            teacher_sh = jax.tree.map(lambda x: x.sharding, self.teacher_params)
            return jax.jit(
                train_step,
                in_shardings=(self.state_sharding, self.batch_sharding, teacher_sh),
                out_shardings=(self.state_sharding, repl),
                donate_argnums=0,
            )

        self.init_fn = jax.jit(init, out_shardings=self.state_sharding)
        self.train_steps = tuple(TrainStep(make_train_step(g), self.teacher_params) for g in self.graphdefs)
        self.eval_steps = tuple(self.plan.eval_step(i) for i in range(len(self.graphdefs)))
        self.train_step, self.eval_step = self.train_steps[-1], self.eval_steps[-1]  # the final stage's

    def stage_at(self, step: int) -> int:
        return self.plan.stage_at(step)

    def global_batch(self, np_batch) -> dict[str, jax.Array]:
        return self.plan.global_batch(np_batch)

    def train_batch(self, step: int):
        return self.global_batch(self.train_data.batch(step, self.pi, self.pc))

    def evaluate(self, params, step: int | None = None) -> dict[str, float]:
        """Held-out loss of the model as trained at `step` (None: the final stage's model)."""
        eval_step = self.eval_steps[-1 if step is None else self.stage_at(step)]
        return plan_lib.evaluate(self.plan, eval_step, params, self.eval_data, self.pi, self.pc)

    def model(self, params):
        """A concrete NNX model holding `params` (for sampling and export)."""
        return self.plan.model(params)


def params_from_run(workdir: str, setup: Setup, fresh=None):
    """(parameters of `workdir`'s latest checkpoint placed with `setup`'s shardings, the paths initialised
    fresh) for config.init_from.

    The source run is restored with its own stored config (its optimizer may differ); its parameter
    tree must equal this run's (same model shapes; the quantization method may differ, e.g. QAT of an
    imported fp model); per-layer and stacked (config.model.scan_layers) layouts are converted. The one
    exceptions (plan.adopt_params): parameters of the modules the family names insertable (the
    transformer's attn_sub_norm / ffn_sub_norm, added by converting an fp Llama to a b1.58 run with
    config.model.sub_norm=True), taken from `fresh` (this run's own initialisation: RMSNorm scale 1), and
    learned quantizer parameters (QAT with FBI, OneBit, ParetoQ … from an fp run), initialised from the
    adopted kernels; their paths are returned. Anything else that differs is refused.
    """
    params = plan_lib.load_run(workdir, setup.mesh, setup.rules, "config.init_from").params
    params, added = plan_lib.adopt_params(
        params,
        setup.abstract_state["params"],
        fresh,
        setup.config.model.name,
        f"config.init_from={workdir!r}",
        plan=setup.plan,
    )
    return jax.device_put(params, setup.state_sharding["params"]), added


# ============================================================================ loop
def train(config: ConfigDict, workdir: str, *, devices=None, stop_after: int | None = None) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its latest checkpoint); returns the final metrics.

    devices: the devices of the mesh (default: all). stop_after: leave (with a checkpoint) after this
    many steps of this invocation, as a preemption would; the run can be resumed later.
    """
    setup = Setup(config, devices)  # validates everything before touching the workdir
    config = setup.config  # the plan's: vocab_size resolved
    lock = resume.lock_workdir(workdir, setup.pi == 0, setup.pc)  # a second run on a live workdir stops here
    try:
        ckpt_dir = os.path.join(workdir, "checkpoints")
        had_checkpoints = os.path.isdir(ckpt_dir)
        ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=config.keep_checkpoints, save_every=max(config.checkpoint_every, 1))
        try:
            try:
                return _run(setup, workdir, ckpt, stop_after)
            finally:
                ckpt.wait()  # whatever stopped the run, a save in flight is finished, never left half-written
                ckpt.close()
        except errors.UserError:  # refused before any step (a mismatched init_from): leave no empty checkpoints/
            if not had_checkpoints and os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
                os.rmdir(ckpt_dir)
            raise
    finally:
        if lock is not None:
            lock.release()


def _run(setup: Setup, workdir: str, ckpt: ckpt_lib.Checkpointer, stop_after: int | None) -> dict[str, Any]:
    config, lead = setup.config, setup.pi == 0
    # stored with every checkpoint: with the tokenizer's copy in the workdir, what restores the run alone
    meta = {
        "config": config_lib.to_dict(config),
        "data": resume.data_fingerprint(config.data, setup.tokenizer.name),
        "tokenizer": plan_lib.tokenizer_meta(setup.tokenizer),
        "quant_recipe": setup.quant_table,
    }
    teacher_step = None if setup.teacher is None else setup.teacher.step
    if setup.teacher is not None:  # which teacher checkpoint: a resume must distill from the same one
        meta["teacher_step"] = teacher_step
    restore_target = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_sharding)
    if ckpt.latest_step() is not None:
        saved_meta = ckpt.restore_metadata()
        resume.check_compatible(config, saved_meta, workdir, setup.tokenizer.name)
        resume.check_same_teacher(config, saved_meta, teacher_step, workdir)
        step0, state = ckpt.restore_latest(restore_target)
        if lead:
            print(f"resumed from {workdir} at step {step0}")
    else:
        state = setup.init_fn(jax.random.key(config.seed))
        if config.init_from:
            state["params"], added = params_from_run(config.init_from, setup, state["params"])
            state["opt_state"] = jax.jit(setup.tx.init, out_shardings=setup.state_sharding["opt_state"])(
                state["params"]
            )
            if lead:
                print(f"initialised from {config.init_from} (its latest checkpoint's parameters)")
                if added:
                    print(f"initialised fresh (absent from {config.init_from}): {', '.join(added)}")
    start = int(state["step"])
    if lead:
        plan_lib.store_tokenizer(workdir, setup.tokenizer)  # restore reads it from here, never from the corpus
        print(
            f"model {config.model.name} ({config.model.quant.method}): {setup.num_params / 1e6:.2f}M params; "
            f"mesh {dict(setup.mesh.shape)}; {config.total_steps} steps × {config.batch_size}×{config.seq_len} tokens"
        )
        print(setup.plan.describe())
        if setup.teacher is not None:
            d = config.distill
            print(
                f"distilling from {d.teacher_workdir} (step {setup.teacher.step}, model "
                f"{setup.teacher.config.model.name} {setup.teacher.config.model.quant.method}): loss {d.loss}, "
                f"temperature {d.temperature:g}, label_weight {d.label_weight:g}"
            )

    if start >= config.total_steps:  # already finished: report, do not train further
        last = last_logged(workdir)
        logged = last.get("step") == start and last.get("eval_bpb") is not None
        ev = setup.evaluate(state["params"])
        last.update(ev)
        if not logged:  # killed during its final eval: write the final row it never wrote (issue 29.5)
            row = {k: v for k, v in last.items() if k != "step"} if last.get("step") == start else {}
            row.update(ev, skipped_steps=int(jax.device_get(state["skipped"])))
            writer = MetricsWriter(workdir, lead, start)
            writer.write(start, row)
            writer.close()
            last = {**last, **row}
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
                limit = run_config.max_skipped_steps(config)
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
