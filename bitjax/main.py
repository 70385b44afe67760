"""Train from a config: python -m bitjax.main --config configs/transformer.py:quant=b158,size=tiny --workdir DIR

Any field can be overridden: --config.total_steps=500 --config.model.quant.grad=clipped.
Unknown fields are rejected by ml_collections with the key named.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from bitjax.train import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/transformer.py:quant=b158",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and TensorBoard events go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    distributed.initialize()  # no-op for a single process; see bitjax/train/distributed.py
    from bitjax.train import trainer  # after distributed init: it touches devices
    metrics = trainer.train(_CONFIG.value, _WORKDIR.value)
    print(json.dumps({k: v for k, v in metrics.items() if k != "sample"}, indent=1))


if __name__ == "__main__":
    app.run(main)
