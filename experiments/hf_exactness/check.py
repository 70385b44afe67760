"""Compare bitjax's b1.58 quantizers with HF transformers' WeightQuant / ActQuant, run in real torch.

    .venv/bin/pip install torch            # not a bitjax dependency
    .venv/bin/python experiments/hf_exactness/check.py

The torch functions restate transformers/integrations/bitnet.py (WeightQuant.forward, ActQuant.forward)
line for line. Prints, per input, the fraction of bit-identical outputs and whether the codes agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bitjax.quant import absmax_act, ternary_absmean


def hf_weight_quant(w):
    dtype = w.dtype
    w = w.float()
    s = 1.0 / w.abs().mean().clamp_(min=1e-5)
    return ((w * s).round().clamp(-1, 1) / s).to(dtype)


def hf_act_quant(x):
    dtype = x.dtype
    x = x.float()
    s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
    return ((x * s).round().clamp(-128, 127) / s).to(dtype)


def main():
    rng = np.random.default_rng(0)
    cases = [
        ("w", (64, 64)),
        ("w", (7, 13)),
        ("w", (256, 512)),
        ("w", (1024, 1024)),
        ("w", (2560, 6912)),
        ("w", (4096, 11008)),
        ("x", (16, 128, 384)),
        ("x", (4, 2560)),
        ("x", (8, 6912)),
    ]
    print(f"torch {torch.__version__}, jax {jax.__version__} ({jax.default_backend()})\n")
    print("| input | shape | bit-identical (eager) | bit-identical (jit) | codes agree |\n|---|---|---|---|---|")
    for kind, shape in cases:
        a = (rng.standard_normal(shape) * (0.02 if kind == "w" else 3.0)).astype(np.float32)
        ours = ternary_absmean if kind == "w" else absmax_act
        ref = (hf_weight_quant if kind == "w" else hf_act_quant)(torch.from_numpy(a)).numpy()
        eager = np.asarray(ours(jnp.asarray(a)))
        jitted = np.asarray(jax.jit(ours)(jnp.asarray(a)))
        same_codes = (
            np.array_equal(np.sign(eager), np.sign(ref))
            if kind == "w"
            else bool(
                np.array_equal(
                    np.round(eager / np.abs(eager).max(-1, keepdims=True) * 127),
                    np.round(ref / np.abs(ref).max(-1, keepdims=True) * 127),
                )
            )
        )
        print(
            f"| {'weight' if kind == 'w' else 'activation'} | {shape} | {(eager == ref).mean():.4f} | "
            f"{(jitted == ref).mean():.4f} | {same_codes} |"
        )


if __name__ == "__main__":
    main()
