"""Export a trained run: packed HF BitNet checkpoint directory, or a GGUF file for llama.cpp.

    python -m bitjax.export --workdir runs/b158 --format hf --out runs/b158-hf [--linear_class autobitlinear|bitlinear]
    python -m bitjax.export --workdir runs/b158 --format gguf --out b158.gguf [--gguf_type tq2_0|tq1_0]
    python -m bitjax.export --workdir runs/fp --format gguf --out fp.gguf [--gguf_type f16|f32|q8_0]

The model config and tokenizer come from the workdir alone (bitjax.run.plan.restore); an hf export carries
the tokenizer as HF files (bitjax.export.tokenizer) and a generation_config.json. `hf` needs `pip install
'bitjax[hf]'`, `gguf` needs `pip install 'bitjax[gguf]'`.

Nothing is overwritten that export did not write (issue 29.1): a gguf --out must not exist; an hf --out must
be absent, empty, or an earlier hf export (marked .bitjax_export) that still holds exactly what it wrote.
Both are written to a temporary name beside --out and renamed into place once complete, so a failed
export leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from bitjax import errors
from bitjax.train import workdir as workdir_lib

MARKER = ".bitjax_export"  # in each hf --out this tool wrote, with what it wrote: only those does it replace


def check_out(fmt: str, out: str) -> None:
    """UserError unless `out` may be written by an export of format `fmt` (checked before loading anything)."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise errors.UserError(f"--out {out}: its parent directory {parent} does not exist")
    if fmt == "gguf":
        if os.path.isdir(out):
            raise errors.UserError(f"--out {out} is a directory: --format gguf writes one file (e.g. {out}/model.gguf)")
        if os.path.lexists(out):
            raise errors.UserError(f"--out {out} exists; nothing was overwritten: remove it or choose another --out")
    else:
        if os.path.lexists(out) and not os.path.isdir(out):
            raise errors.UserError(f"--out {out} is a file: --format hf writes a directory")
        if not workdir_lib.replaceable(out, MARKER):
            raise errors.UserError(
                f"--out {out} is a non-empty directory this export did not write (or holds more than it wrote); "
                "nothing was overwritten: choose another --out"
            )


def write_atomically(fmt: str, out: str, write) -> dict:
    """write(tmp) into a temporary path beside `out`, then renamed to `out`; ValueError of write → UserError."""
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(prefix=".bitjax_export-", dir=parent)
    target = tmp if fmt == "hf" else os.path.join(tmp, "model.gguf")
    try:
        with errors.as_user_errors():  # the writers check the model (gguf of fp, no sub_norm, …) before writing
            info = write(target)
        if fmt == "hf":
            workdir_lib.seal(tmp, MARKER)
        check_out(fmt, out)  # again: nothing appeared there meanwhile
        if fmt == "hf" and os.path.isdir(out):
            shutil.rmtree(out)  # absent, empty or our own unchanged export (check_out)
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**info, "path": out} if "path" in info else info


@errors.cli
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
    p.add_argument(
        "--gguf_type",
        default=None,
        choices=("tq2_0", "tq1_0", "f32", "f16", "q8_0"),
        help="gguf: tq2_0 (default) | tq1_0 for b158 runs (llama.cpp bitnet), f16 (default) | f32 | q8_0 for fp runs (llama)",
    )
    args = p.parse_args(argv)
    check_out(args.format, args.out)

    from bitjax.run import plan as plan_lib

    plan, params = plan_lib.restore_one_device(args.workdir, args.step)
    model, cfg, tok = plan.model(params), plan.config.model, plan.tokenizer
    if args.format == "hf":
        from bitjax.export.hf import hf_config, hf_quantized, save_hf

        with errors.as_user_errors():  # a family or quantization HF has no layout for
            hf_config(cfg), hf_quantized(cfg)
        info = write_atomically(
            "hf", args.out, lambda d: save_hf(model, cfg, d, linear_class=args.linear_class, tokenizer=tok)
        )
    else:
        from bitjax.export.gguf import save_gguf

        info = write_atomically(
            "gguf", args.out, lambda f: save_gguf(model, cfg, f, gguf_type=args.gguf_type, tokenizer=tok)
        )
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
