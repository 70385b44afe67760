"""Whole-model check: bitjax's Transformer vs HF transformers' LlamaForCausalLM / BitNetForCausalLM.

    .venv/bin/pip install torch==2.13.0 transformers     # not bitjax dependencies
    .venv/bin/python experiments/hf_exactness/model_check.py

Builds a randomly initialised bitjax model, copies every parameter into the HF model through
`hf_param_names` (HF weight = our kernel transposed), runs the same tokens through both in float32 and
prints the largest logit difference. Cases:
  * fp:   bitjax `fp` (SwiGLU, untied)            vs LlamaForCausalLM
  * b158: bitjax `b158` (relu2, sub-norms, tied)  vs BitNetForCausalLM with HF's AutoBitLinear in
          online-quantization mode (WeightQuant + ActQuant on every projection, lm_head FP)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from bitjax.export.hf import to_hf_model
from bitjax.models import transformer as T

SHAPE = dict(vocab_size=384, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=384, rope_theta=10000.0)


def ours(method: str, **kw):
    cfg = T.default_config()
    cfg.update({**SHAPE, **kw})
    cfg.quant.method = method
    model = T.Transformer(cfg, rngs=nnx.Rngs(0))
    # non-trivial norm gains, so a norm wired to the wrong place would show
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "scale":
            var.set_value(1.0 + 0.1 * jax.random.normal(jax.random.key(len(path)), var.get_value().shape))
    return model


def compare(method: str, **kw):
    model = ours(method, **kw)
    cfg = T.default_config()
    cfg.update({**SHAPE, **kw})
    cfg.quant.method = method
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 64))
    mine = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    hf = to_hf_model(model, cfg)
    arch = type(hf).__name__
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    diff = np.abs(mine - ref)
    agree = (mine.argmax(-1) == ref.argmax(-1)).mean()
    print(f"| {method} | {arch} | {diff.max():.2e} | {diff.mean():.2e} | {np.abs(ref).mean():.3f} | {agree:.4f} |")


def main():
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, jax {jax.__version__}\n")
    print("| bitjax method | HF model | max abs logit diff | mean abs diff | mean abs logit | argmax agree |")
    print("|---|---|---|---|---|---|")
    compare("fp")
    compare("b158", activation="relu2", sub_norm=True, tie_embeddings=True)


if __name__ == "__main__":
    main()
