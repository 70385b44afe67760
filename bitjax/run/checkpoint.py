"""Checkpointing: one orbax ``CheckpointManager`` behind a small class.

Layout: ``<directory>/<step>/state`` (the array pytree, ``StandardSave``) and
``<directory>/<step>/meta`` (a JSON dict, e.g. the model config, so the trainer
can refuse to resume with an incompatible config). Orbax writes each step to a
temporary directory and renames it when complete, so an interrupted async save
is never listed as a step.

Deletion policy: only orbax's own ``max_to_keep`` policy deletes checkpoints,
and orbax's tmp-dir cleanup is left off. The one thing this module does to the
directory itself: when a restore had to skip damaged steps (and an older step
restored), the damaged step directories are *renamed* (``<step>`` →
``<step>.corrupt``): the next resume does not trip over them again, and orbax
sees those steps as free (it would otherwise silently skip every save up to
the damaged step). Nothing is removed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


def abstract_with_shardings(abstract_state, shardings):
    """``jax.ShapeDtypeStruct(shape, dtype, sharding=s)`` per leaf: a restore target.

    ``abstract_state`` from ``jax.eval_shape`` / ``nnx.eval_shape`` +
    ``nnx.state``; ``shardings`` from ``bitjax.run.mesh.param_shardings`` of
    the same tree (same structure, leaf for leaf).
    """
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def _jsonable(metadata) -> dict:
    """Plain JSON dict (ConfigDicts and numpy values converted; tuples become lists)."""

    def default(o):
        if hasattr(o, "to_dict"):
            return o.to_dict()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"checkpoint metadata value {o!r} ({type(o).__name__}) is not JSON-serializable")

    meta = json.loads(json.dumps({} if metadata is None else metadata, default=default))
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    return meta


class Checkpointer:
    """Save / restore a pytree of (sharded) ``jax.Array`` s plus a JSON dict.

    Args:
      directory: where step directories live (created if missing).
      keep: how many most recent checkpoints orbax keeps (None: all).
      save_every: ``save`` only writes when ``step % save_every == 0`` (or at
        a preemption sync point), unless ``force=True``.
      async_: write in a background thread; ``save`` returns once the arrays
        are copied off the devices. Call :meth:`wait` / :meth:`close` before exit.

    ``state`` is any pytree of arrays, e.g. ``nnx.state((model, optimizer))`` or
    its ``nnx.to_pure_dict``; restore targets must have the same structure.
    """

    def __init__(self, directory, keep: int | None = 3, save_every: int = 1000, async_: bool = True):
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep = {keep!r}: must be an int >= 1 or None (keep all).")
        if not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"save_every = {save_every!r}: must be an int >= 1.")
        self.directory = os.path.abspath(os.fspath(directory))  # orbax wants absolute paths
        policies = ocp.checkpoint_managers
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_,
                create=True,
                cleanup_tmp_directories=False,
                # Orbax's default also saves the very first step of a fresh run
                # (InitialSavePolicy); we want exactly "every save_every steps"
                # (plus preemption sync points, which only fire on preemptible jobs).
                save_decision_policy=policies.AnySavePolicy(
                    [policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]
                ),
            ),
        )

    # -- bookkeeping ---------------------------------------------------------------

    def all_steps(self, reload: bool = False) -> list[int]:
        """The finished steps; reload=True re-reads the directory (another process may have saved or deleted)."""
        if reload:
            self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def should_save(self, step: int) -> bool:
        return self._mngr.should_save(step)

    def wait(self) -> None:
        """Blocks until pending async saves are finalized (listed by ``all_steps``)."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- save ------------------------------------------------------------------------

    def save(self, step: int, state, metadata: dict | None = None, force: bool = False) -> bool:
        """Saves ``state`` and the JSON ``metadata`` at ``step``; returns whether it saved.

        Skipped (False) when ``step`` is not a multiple of ``save_every`` (unless
        ``force``) or not newer than the latest checkpoint.
        """
        meta = _jsonable(metadata)
        return self._mngr.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force
        )

    def _move_aside(self, bad: list[int]) -> None:
        """Renames the damaged step directories ``bad`` to ``<step>.corrupt`` (process 0 does it)."""
        if jax.process_index() == 0:
            for s in bad:
                src = os.path.join(self.directory, str(s))
                dst = src + ".corrupt"
                if os.path.exists(dst):
                    dst = f"{dst}-{int(time.time())}"
                if os.path.isdir(src):
                    os.rename(src, dst)
                    logger.warning(
                        "Renamed damaged checkpoint %s to %s so step %d can be saved again (nothing was deleted).",
                        src,
                        dst,
                        s,
                    )
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"bitjax_ckpt_move_aside_{bad[0]}_{bad[-1]}")
        self._mngr.reload()

    # -- restore ------------------------------------------------------------------------

    def _restore(self, step: int, abstract_state):
        out = self._mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        )
        return out["state"]

    def restore(self, step: int | None, abstract_state):
        """Restores the state saved at ``step`` onto the shardings in ``abstract_state``.

        ``abstract_state``: a pytree of ``jax.ShapeDtypeStruct(..., sharding=...)``
        (see :func:`abstract_with_shardings`); each restored array is placed
        with its leaf's sharding. ``step=None`` means the newest restorable
        step, falling back past damaged ones (see :meth:`restore_latest`);
        raises ``FileNotFoundError`` if there is none. An explicit step is not
        substituted: its errors propagate.
        """
        if step is None:
            found = self.restore_latest(abstract_state)
            if found is None:
                raise FileNotFoundError(f"No checkpoints in {self.directory}.")
            return found[1]
        self.wait()
        return self._restore(step, abstract_state)

    def restore_latest(self, abstract_state) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores, or None if none exist.

        A step whose files are damaged or incomplete fails to restore; it is
        logged as a warning and the next older step is tried. The skipped steps
        are only considered damaged once an older one restores with the same
        target (so an incompatible ``abstract_state`` raises the newest step's
        error instead of marking everything bad); they are then renamed
        ``<step>.corrupt``.
        """
        self.wait()
        self._mngr.reload()
        steps = sorted(self._mngr.all_steps(), reverse=True)
        failed: list[tuple[int, Exception]] = []
        for step in steps:
            try:
                state = self._restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means "try the previous one"
                logger.warning(
                    "Checkpoint step %d in %s could not be restored (%s: %s); trying the previous one.",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e)[:500],
                )
                failed.append((step, e))
                continue
            if failed:
                logger.warning(
                    "Restored checkpoint step %d instead of the damaged newer step(s) %s.", step, [s for s, _ in failed]
                )
                self._move_aside(sorted(s for s, _ in failed))
            return step, state
        if failed:
            raise RuntimeError(
                f"None of the checkpoints {steps} in {self.directory} could be restored with the given "
                f"target; the newest failed with the error above."
            ) from failed[0][1]
        return None

    def restore_params(self, step: int, abstract_params):
        """Only ``state['params']`` of ``step`` (no optimizer state is read), placed as ``abstract_params``
        says (a pytree of ``jax.ShapeDtypeStruct(..., sharding=...)``): for another run's model (a
        distillation teacher, config.init_from) where the optimizer state would only cost memory."""
        self.wait()
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract_params)
        out = ocp.PyTreeCheckpointer().restore(
            os.path.join(self.directory, str(step), "state"),
            args=ocp.args.PyTreeRestore(
                {"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True
            ),
        )
        return out["params"]

    def restore_metadata(self, step: int | None = None) -> dict:
        """The JSON dict saved with ``step``.

        ``step=None``: the newest step whose metadata reads, skipping (with a
        warning) steps whose ``meta`` item is damaged; ``FileNotFoundError`` if
        there are no checkpoints.
        """
        self.wait()
        if step is not None:
            return self._read_meta(step)
        self._mngr.reload()
        steps = sorted(self._mngr.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"No checkpoints in {self.directory}.")
        for i, s in enumerate(steps):
            try:
                return self._read_meta(s)
            except Exception as e:
                if i == len(steps) - 1:
                    raise
                logger.warning(
                    "Metadata of checkpoint step %d in %s could not be read (%s: %s); trying the previous one.",
                    s,
                    self.directory,
                    type(e).__name__,
                    str(e)[:500],
                )

    def _read_meta(self, step: int) -> dict:
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
