"""Train from a config: python -m bitjax.main --config configs/transformer.py:quant=b158,size=tiny --workdir DIR

Any field can be overridden: --config.total_steps=500 --config.model.quant.grad=clipped.
Unknown fields are rejected by ml_collections with the key named. A user error (bad flag, config,
data, workdir or checkpoint) prints one line `error: ...` and exits 2; see bitjax/errors.py.
"""

from __future__ import annotations

import json
import re

from absl import app, flags, logging
from ml_collections import config_flags

from bitjax import errors
from bitjax.train import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/transformer.py:quant=b158", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and TensorBoard events go.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
_AUTO = flags.DEFINE_bool("distributed", False, "Let JAX detect the cluster (TPU pod slice, SLURM, MPI).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's parser, with any flag or config-file error reported as one line (exit 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        # a failing config file arrives as its whole traceback; its last line is the error itself
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if "Traceback" in str(e) else str(e)
        errors.report(errors.UserError(msg))
    except KeyError as e:  # --config.<typo>=...: ml_collections names the field and suggests one
        errors.report(errors.UserError(f"unknown config field {e.args[0] if e.args else e}"))
    except (AttributeError, TypeError, ValueError) as e:  # a bad --config.<field>=<value> override
        errors.report(e)


@errors.cli
def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO: keep the console readable
        logging.set_verbosity(logging.WARNING)
    # a no-op for a single process; see bitjax/train/distributed.py
    with errors.as_user_errors():  # incomplete --coordinator_address/--num_processes/--process_id
        distributed.initialize(_COORD.value, _NPROC.value, _PID.value, _AUTO.value)
    from bitjax.train import metrics, trainer  # after distributed init: it touches devices

    final = trainer.train(_CONFIG.value, _WORKDIR.value)
    # strict JSON (NaN → null): the output is meant to be read by other tools
    print(json.dumps(metrics.jsonable_metrics(final), indent=1))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
