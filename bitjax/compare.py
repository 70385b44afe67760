"""The main job: train an FP baseline and BitNet b1.58 (`tiny`) on the embedded corpus, then compare.

    python -m bitjax.compare [--methods fp,b158] [--steps N] [--workdir workdirs/compare]

Each method trains from configs/transformer.py with identical data, seed and schedule shape, at its own
peak LR (b1.58 wants a higher one than FP, see experiments/compare_tiny); the table shows final train
loss, eval loss and bits-per-byte on the held-out files, and training throughput.

Without --resume each run starts afresh: a WORKDIR/<method> left by an earlier comparison (it holds the
marker file .bitjax_compare) is replaced; any other non-empty directory there is refused, never deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil

from bitjax import errors
from bitjax.train import trainer
from bitjax.train import workdir as workdir_lib

MARKER = ".bitjax_compare"  # in each WORKDIR/<method> this tool created: only those does it replace


def _config(method: str, steps: int):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transformer.py")
    spec = importlib.util.spec_from_file_location("bitjax_configs_transformer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(f"quant={method},size=tiny,steps={steps}")


def fresh_workdir(wd: str) -> None:
    """Makes `wd` an empty directory for a new run, deleting only a previous run of this tool."""
    if os.path.isdir(wd) and os.listdir(wd):
        if not os.path.exists(os.path.join(wd, MARKER)):
            raise errors.UserError(
                f"{wd} exists and was not made by bitjax.compare (it may hold a real run); nothing was "
                f"deleted. Pass --resume to continue the runs there, or choose another --workdir.")
        with workdir_lib.Lock(wd):  # refuses if a run is still writing there
            pass
        shutil.rmtree(wd)
    workdir_lib.prepare(wd)
    open(os.path.join(wd, MARKER), "w").close()


@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="fp,b158", help="comma-separated quantization methods")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0 = the tiny preset's)")
    p.add_argument("--workdir", default="workdirs/compare", help="runs go to WORKDIR/<method>")
    p.add_argument("--resume", action="store_true",
                   help="continue runs found in WORKDIR/<method> instead of starting them afresh")
    args = p.parse_args(argv)
    results = {}
    methods = args.methods.split(",")
    configs = {m: _config(m, args.steps) for m in methods}  # a bad method or step count fails before any run
    for method in methods:
        wd = os.path.join(args.workdir, method)
        if not args.resume:
            fresh_workdir(wd)
        print(f"\n=== {method} → {wd}")
        config = configs[method]
        results[method] = {**trainer.train(config, wd), "peak_lr": config.optim.lr}
    print("\n| method | peak lr | final train loss | eval loss (nats/token) | eval bits/byte | tokens/s |")
    print("|---|---|---|---|---|---|")
    for method, r in results.items():
        print(f"| {method} | {r['peak_lr']:g} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} | "
              f"{r['eval_bpb']:.4f} | {r['tokens_per_s']:.0f} |")
    print("\n(Step-time ratios measured side by side: python benchmarks/step_time.py → benchmarks/RESULTS.md)")
    return results


if __name__ == "__main__":
    main()
