"""Builders the test modules share: the small stdlib corpus and a tiny trainer config.

A plain module (not a test file), imported as `from builders import tiny_config`; `conftest.py` puts
this directory on sys.path and offers the same as fixtures (`make_config`, `corpus_files`).
"""

import json
import os
import sysconfig

from bitjax.models import transformer
from bitjax.run import config as train_config

STDLIB = sysconfig.get_paths()["stdlib"]
FILES = [
    os.path.join(STDLIB, f)
    for f in ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "colorsys.py", "bisect.py", "heapq.py")
]


def tiny_config(method="b158", steps=30, data_dir=None, **over):
    """A 2-layer d=32 transformer on FILES: 8×32 tokens a step, a log row every step, no periodic eval.

    `over` takes dotted keys as on the command line: tiny_config(**{"optim.lr": 1e-3}).
    """
    c = train_config.trainer_config()
    c.total_steps, c.batch_size, c.seq_len = steps, 8, 32
    c.log_every, c.eval_every = 1, 0
    c.optim.lr, c.optim.warmup_steps = 3e-3, 5
    c.data.name, c.data.paths, c.data.data_dir = "text_files", tuple(FILES), data_dir
    c.data.eval_batches = 2
    c.model = transformer.default_config()
    c.model.update(dict(vocab_size=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64))
    c.model.quant.method = method
    for key, value in over.items():  # dotted keys, as on the command line
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def losses(workdir):
    """The train losses in metrics.jsonl, by step (the last row of a step wins)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            by_step[r["step"]] = r["train_loss"]
    return [by_step[k] for k in sorted(by_step)]
