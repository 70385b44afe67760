"""Mamba-2 LM, full precision or Bi-Mamba (binarized in_proj / out_proj).

    python -m bitjax.main --config configs/mamba2.py:quant=bimamba,size=tiny --workdir /tmp/run

Arguments (after the colon): quant = fp | bimamba (or any method over `*_proj`: b158, fbi, rtn4, …),
size = tiny | small | 780m | 1.3b | 2.7b (bitjax.models.mamba2.SIZES), steps = total steps (0 = size default).
"""

from bitjax.run import config as train_config

# Per size: (total_steps, batch_size, seq_len, peak lr, warmup at total_steps). The Bi-Mamba sizes take the
# reference trainer's recipe (github.com/Tangshengku/Bi-Mamba fbi_mamba.py: AdamW lr 2.5e-4 cosine to 10%,
# β2 0.95, weight decay 0.1, grad clip 1, 2000 warmup steps: bitjax's optim defaults but lr and warmup) with
# 0.5M-token batches of 2048-token sequences. tiny/small share the transformer's (untuned for Mamba-2).
RUN = {
    "tiny": (300, 16, 128, 3e-3, 30),
    "small": (20_000, 256, 1024, 1.5e-3, 750),
    "780m": (100_000, 256, 2048, 2.5e-4, 2000),
    "1.3b": (100_000, 256, 2048, 2.5e-4, 2000),
    "2.7b": (100_000, 256, 2048, 2.5e-4, 2000),
}


def get_config(arg=None):
    config, _ = train_config.preset(arg, "mamba2", RUN, quant="bimamba")
    return config


def get_sweep():
    """The grid of `python -m bitjax.sweep --config configs/mamba2.py:size=tiny --workdir DIR` (no --grid)."""
    return {"quant": ["fp", "bimamba"], "seed": [0, 1, 2]}
