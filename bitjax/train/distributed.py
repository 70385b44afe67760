"""Multi-process start-up: `jax.distributed.initialize` before any device use.

Single process (the default): nothing happens. Otherwise, in order of precedence:
  * explicit coordinator: flags `--coordinator_address=host:port --num_processes=n --process_id=i`
    or the env vars BITJAX_COORDINATOR, BITJAX_NUM_PROCESSES, BITJAX_PROCESS_ID (e.g. localhost
    tests or a hand-rolled launcher);
  * `--distributed=auto` or BITJAX_DISTRIBUTED=auto: JAX detects the cluster (TPU pod slices,
    SLURM, Open MPI) and fills in all three.
"""

from __future__ import annotations

import os

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    coord = coordinator_address or os.environ.get("BITJAX_COORDINATOR")
    if coord:
        try:
            n = int(num_processes if num_processes is not None else os.environ["BITJAX_NUM_PROCESSES"])
            i = int(process_id if process_id is not None else os.environ["BITJAX_PROCESS_ID"])
        except (KeyError, ValueError) as e:
            raise ValueError(
                "a coordinator address is set, so the number of processes and this process's id "
                "must be given too (--num_processes/--process_id or BITJAX_NUM_PROCESSES/"
                f"BITJAX_PROCESS_ID): {e}"
            ) from None
        if not 0 <= i < n:
            raise ValueError(f"process id {i} is not in [0, {n})")
        jax.distributed.initialize(coord, num_processes=n, process_id=i)
    elif auto or os.environ.get("BITJAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def any_process(flag: bool) -> bool:
    """True if `flag` is set on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))
