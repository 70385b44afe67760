"""Mamba-2 LM, full precision or Bi-Mamba (binarized in_proj / out_proj).

    python -m bitjax.main --config configs/mamba2.py:quant=bimamba,size=tiny --workdir /tmp/run

Arguments (after the colon): quant = fp | bimamba (or any method over `*_proj`: b158, fbi, rtn4, …),
size = tiny | small | 780m | 1.3b | 2.7b (bitjax.models.mamba2.SIZES), steps = total steps (0 = size default).
"""

from bitjax import config as config_lib
from bitjax.models import mamba2

# Per size: (total_steps, batch_size, seq_len, peak lr, warmup at total_steps). The large sizes use Mamba's
# GPT-3-style recipe (peak LR ≈ 5× GPT-3's at the same size, 2048-token sequences, 0.5M-token batches).
RUN = {
    "tiny": (300, 16, 128, 3e-3, 30),
    "small": (20_000, 256, 1024, 3e-3, 750),
    "780m": (50_000, 256, 2048, 1.25e-3, 1000),
    "1.3b": (50_000, 256, 2048, 1e-3, 1000),
    "2.7b": (100_000, 256, 2048, 8e-4, 2000),
}


def get_config(arg=None):
    config, _ = config_lib.preset(arg, mamba2.default_config(), mamba2.SIZES, RUN, quant="bimamba")
    return config


def get_sweep():
    """The grid of `python -m bitjax.sweep --config configs/mamba2.py:size=tiny --workdir DIR` (no --grid)."""
    return {"quant": ["fp", "bimamba"], "seed": [0, 1, 2]}
