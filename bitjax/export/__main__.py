"""Export a trained run: packed HF BitNet checkpoint directory, or a GGUF file for llama.cpp.

    python -m bitjax.export --workdir runs/b158 --format hf --out runs/b158-hf [--linear_class autobitlinear|bitlinear]
    python -m bitjax.export --workdir runs/b158 --format gguf --out b158.gguf [--gguf_type tq2_0|tq1_0]

The model config and tokenizer come from the workdir alone (bitjax.run.plan.restore). `hf` needs `pip install
'bitjax[hf]'`, `gguf` needs `pip install 'bitjax[gguf]'`.
"""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m bitjax.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", required=True, choices=("hf", "gguf"))
    p.add_argument("--out", required=True, help="a directory (hf) or a .gguf file (gguf)")
    p.add_argument(
        "--linear_class",
        default="autobitlinear",
        choices=("bitlinear", "autobitlinear"),
        help="hf, b158: HF's AutoBitLinear (what microsoft/bitnet-b1.58-2B-4T ships; weight_scale = γ, "
        "multiplied) or BitLinear (weight_scale = 1/γ, divided)",
    )
    p.add_argument("--gguf_type", default="tq2_0", choices=("tq2_0", "tq1_0"))
    args = p.parse_args(argv)

    from bitjax.run import plan as plan_lib

    plan, params = plan_lib.restore_one_device(args.workdir, args.step)
    model, cfg, tok = plan.model(params), plan.config.model, plan.tokenizer
    ids = {"bos_token_id": int(tok.bos_id), "eos_token_id": int(tok.eos_id), "pad_token_id": int(tok.pad_id)}
    if args.format == "hf":
        from bitjax.export.hf import save_hf

        info = save_hf(model, cfg, args.out, linear_class=args.linear_class, token_ids=ids)
    else:
        from bitjax.export.gguf import save_gguf

        info = save_gguf(model, cfg, args.out, gguf_type=args.gguf_type, tokenizer=tok)
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
