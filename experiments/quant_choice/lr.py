"""Prints a method's peak LR at the CPU sizes (configs/transformer.py's CPU_LR) as run.sh's grids spell it.

python experiments/quant_choice/lr.py b158   # → 3e-3
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from bitjax import sweep


def cpu_lr(method: str) -> str:
    lr = sweep._load_module(os.path.join(ROOT, "configs", "transformer.py")).CPU_LR[method]
    return f"{lr:.0e}".replace("e-0", "e-")  # 0.003 → '3e-3', the tuning grid's spelling (same point name)


if __name__ == "__main__":
    print(cpu_lr(sys.argv[1]))
