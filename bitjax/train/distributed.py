"""Multi-process start-up: `jax.distributed.initialize` from flags/env, before any device use.

Single process (the default): nothing happens. Otherwise, in order of precedence:
  * BITJAX_COORDINATOR=host:port, BITJAX_NUM_PROCESSES=n, BITJAX_PROCESS_ID=i (explicit, e.g. localhost
    tests or a hand-rolled launcher);
  * BITJAX_DISTRIBUTED=auto: let JAX detect the cluster (TPU pod slices, SLURM, Open MPI).
"""

from __future__ import annotations

import os

import jax


def initialize() -> None:
    coord = os.environ.get("BITJAX_COORDINATOR")
    if coord:
        try:
            n, i = int(os.environ["BITJAX_NUM_PROCESSES"]), int(os.environ["BITJAX_PROCESS_ID"])
        except (KeyError, ValueError) as e:
            raise ValueError("BITJAX_COORDINATOR is set, so BITJAX_NUM_PROCESSES and BITJAX_PROCESS_ID must be "
                             f"integers too ({e})") from None
        jax.distributed.initialize(coord, num_processes=n, process_id=i)
    elif os.environ.get("BITJAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
