"""Logit parity of a trained b158 run with HF transformers, online and packed offline, on unseen text.

    python experiments/deploy_parity/parity.py --workdir runs/b158 [--tokens 256]

Compares bitjax's logits with (1) HF BitNetForCausalLM in online mode (AutoBitLinear re-quantizing the
latent weights: bitjax.export.hf.to_hf_model), (2) the packed offline export loaded with
from_pretrained, linear_class bitlinear (2B4T's) and autobitlinear, and (3) bitjax's own import of (2).
The text is `--tokens` bytes of `--text` past offset 4000: by default the Python stdlib's calendar.py,
which the default corpus (python_stdlib) contains, so pass a file the run never saw (the README's
figures used this repository's README.md as of the commit that added this script).
"""

import argparse
import os
import sys
import sysconfig
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from bitjax.export.hf import load_hf, save_hf, to_hf_model
from bitjax.run.plan import restore_one_device


def gap(a, b):
    d = np.abs(a - b)
    return f"mean {d.mean():.2e}  max {d.max():.2e}  top-1 agree {(a.argmax(-1) == b.argmax(-1)).mean():.4f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--text", default=os.path.join(sysconfig.get_paths()["stdlib"], "calendar.py"))
    args = p.parse_args()
    plan, params = restore_one_device(args.workdir)
    model, cfg = plan.model(params), plan.config.model
    with open(args.text, "rb") as f:
        text = f.read()[4000 : 4000 + args.tokens].decode("utf-8", "replace")
    ids = plan.tokenizer.encode(text)[None, : args.tokens]
    mine = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    print(
        f"{args.workdir}: {cfg.quant.method}, {ids.shape[1]} tokens of {args.text}; |logit| mean "
        f"{np.abs(mine).mean():.3f}"
    )

    def hf_logits(hf):
        with torch.no_grad():
            return hf(torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()

    online = "HF online (AutoBitLinear on latents)" if cfg.quant.method == "b158" else "HF float (to_hf_model)"
    print(f"  {online:42s} {gap(mine, hf_logits(to_hf_model(model, cfg)))}")
    if cfg.quant.method == "b158":
        for lc in ("bitlinear", "autobitlinear"):
            with tempfile.TemporaryDirectory() as d:
                save_hf(
                    model,
                    cfg,
                    d,
                    linear_class=lc,
                    token_ids=dict(bos_token_id=plan.tokenizer.bos_id, eos_token_id=plan.tokenizer.eos_id),
                )
                ref = hf_logits(transformers.BitNetForCausalLM.from_pretrained(d).eval())
                print(f"  HF packed offline ({lc:13s})            {gap(mine, ref)}")
                back = np.asarray(load_hf(d)[1](jnp.asarray(ids, jnp.int32)))
                print(f"  bitjax import of it vs HF                  {gap(back, ref)}")


if __name__ == "__main__":
    main()
