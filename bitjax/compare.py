"""The main job: train an FP baseline and BitNet b1.58 (`tiny`) on the embedded corpus, then compare.

    python -m bitjax.compare [--methods fp,b158] [--steps N] [--workdir workdirs/compare]
                             [--config configs/transformer.py[:ARG=V,…]]

Each method trains from the config file (default configs/transformer.py; any model family's config that
takes the arguments quant, size and steps, e.g. configs/mamba2.py) at size `tiny` unless ARG sets
another, with identical data, seed and schedule shape, at its own peak LR (b1.58 wants a higher one
than FP, see experiments/compare_tiny); the table shows final train loss, eval loss and bits-per-byte
on the held-out files, and training throughput.

Without --resume each run starts afresh: a WORKDIR/<method> left by an earlier comparison (it holds the
marker file .bitjax_compare) is replaced; any other non-empty directory there is refused, never deleted.

A special case of bitjax.sweep (`--grid quant=fp,b158` with `size=tiny`): points named by method,
trained by the sweep's runner; see `python -m bitjax.sweep` for seeds, other fields, shards and plots.
"""

from __future__ import annotations

import argparse
import os

from bitjax import errors, sweep
from bitjax.train import workdir as workdir_lib

MARKER = ".bitjax_compare"  # in each WORKDIR/<method> this tool created: only those does it replace


CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transformer.py")


def _point(method: str, steps: int, config: str = CONFIG_FILE) -> sweep.Point:
    """The sweep point of `method`: FILE:quant=<method>,size=tiny,steps=<steps> (+ the ARGs of
    `config` = 'FILE[:ARG=V,…]', which may set another size), trained in WORKDIR/<method>."""
    path, _, extra = config.partition(":")
    args = {"quant": method, "size": "tiny", "steps": steps, **sweep.split_arg(extra)}
    args.update(quant=method, steps=steps)  # --methods and --steps decide these
    return sweep.Point(method, {"quant": method}, path, ",".join(f"{k}={v}" for k, v in args.items()), [])


def _config(method: str, steps: int, config: str = CONFIG_FILE):
    return _point(method, steps, config).config()


def fresh_workdir(wd: str) -> None:
    """Makes `wd` an empty directory for a new run, deleting only a previous run of this tool."""
    workdir_lib.fresh(
        wd,
        MARKER,
        f"{wd} exists and was not made by bitjax.compare (it may hold a real run); "
        f"nothing was deleted. Pass --resume to continue the runs there, or choose another --workdir.",
    )


@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="fp,b158", help="comma-separated quantization methods")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0 = the tiny preset's)")
    p.add_argument("--workdir", default="workdirs/compare", help="runs go to WORKDIR/<method>")
    p.add_argument(
        "--config",
        default=CONFIG_FILE,
        help="config file[:ARG=V,…] taking the arguments quant, size, steps (default: the transformer's)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue runs found in WORKDIR/<method> instead of starting them afresh"
    )
    args = p.parse_args(argv)
    results = {}
    if not os.path.isfile(args.config.partition(":")[0]):
        raise errors.UserError(f"--config {args.config.partition(':')[0]}: no such file")
    points = [_point(m, args.steps, args.config) for m in args.methods.split(",")]
    configs = {p.name: p.config() for p in points}  # a bad method or step count fails before any run
    for point in points:
        if not args.resume:
            fresh_workdir(os.path.join(args.workdir, point.name))
        config = configs[point.name]
        trained = sweep.run_point(point, args.workdir, config)
        # a run stopped early (SIGTERM) is not finished: the table shows where it stopped
        final = sweep.point_result(point, args.workdir, config) or trained
        results[point.name] = {**final, "peak_lr": config.optim.lr}
    print("\n| method | peak lr | final train loss | eval loss (nats/token) | eval bits/byte | tokens/s |")
    print("|---|---|---|---|---|---|")
    for method, r in results.items():
        print(
            f"| {method} | {r['peak_lr']:g} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} | "
            f"{r['eval_bpb']:.4f} | {r['tokens_per_s']:.0f} |"
        )
    print("\n(Step-time ratios measured side by side: python benchmarks/step_time.py → benchmarks/RESULTS.md)")
    return results


if __name__ == "__main__":
    main()
