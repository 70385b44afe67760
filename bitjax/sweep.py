"""Sweeps: one training run per point of a grid, then a table and plots of all of them.

    python -m bitjax.sweep --config configs/transformer.py:size=tiny --grid quant=fp,b158,a48 \
        --grid seed=0,1,2 --workdir runs/sweep [--config.total_steps=300 ...] [--shard i/n]
        [--print_commands] [--collect]

`--grid KEY=V1,V2,…` (repeatable; repeated grids form the product, first key varying slowest):
  * KEY a config argument (the part after `:`, e.g. `quant`, `size`, `steps`): each point's config
    string gets KEY=V;
  * otherwise a config field, `config.optim.lr` or just `optim.lr` (`seed` is config.seed): each point
    gets `--config.KEY=V`, typed exactly as on bitjax.main's command line.
Without --grid, the config file's `get_sweep()` (a dict KEY → list of values) defines the grid.
`--config.x=y` flags apply to every point.

Each point trains in WORKDIR/<point name> (`quant=b158,seed=1`), in this process, one after the other.
Re-running skips finished points and resumes interrupted ones (the trainer's exact resume); a point
whose directory holds a run started with another config (a rerun with changed flags) is refused before
anything trains, naming the fields. A diverged point is listed as failed in results.md, the other points
train, and the sweep exits 1 at the end.
For many machines, `--shard i/n` runs every n-th point from the i-th; `--print_commands` prints one
`python -m bitjax.main` command per point instead of running (for a SLURM job array, a TPU queue);
`--collect` only gathers what is on disk. Every invocation writes, over the finished points:
  WORKDIR/results.csv   one row per point (final train loss, eval loss, eval bits/byte, tokens/s, step time)
  WORKDIR/results.md    mean ± std over seeds per setting, with step time / fp's at the same other values
  WORKDIR/loss_curves.png, WORKDIR/eval_bpb.png   with matplotlib (pip install 'bitjax[plots]')
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import shlex
import statistics
import sys

from bitjax import errors

SEED_KEYS = ("seed",)  # grid keys averaged over in results.md
QUANT_KEYS = ("quant", "model.quant.method")  # the grid key whose 'fp' point is the step-time reference
METRICS = ("train_loss", "eval_loss", "eval_bpb", "tokens_per_s", "step_time_s")


# ============================================================================ points
@dataclasses.dataclass
class Point:
    """One run: config file + argument string + typed field overrides, trained in WORKDIR/<name>."""

    name: str
    values: dict[str, str]  # grid key → value, as typed
    config_file: str
    arg: str  # the config argument, e.g. 'quant=b158,size=tiny'
    overrides: list[tuple[str, str]]  # (field path, value) applied as --config.<path>=<value>

    def flags(self) -> list[str]:
        spec = f"{self.config_file}:{self.arg}" if self.arg else self.config_file
        return [f"--config={spec}"] + [f"--config.{k}={v}" for k, v in self.overrides]

    def config(self):
        """The point's ConfigDict, parsed by ml_collections as bitjax.main parses its flags."""
        return build_config(self.flags())

    def command(self, workdir: str) -> str:
        args = ["python", "-m", "bitjax.main", *self.flags(), f"--workdir={os.path.join(workdir, self.name)}"]
        return " ".join(shlex.quote(a) for a in args)


def build_config(flag_list: list[str]):
    """`--config=FILE:ARG --config.a.b=V …` → ConfigDict, via a fresh absl FlagValues (typed overrides).

    A bad file, argument or field raises UserError with one line naming it.
    """
    from absl import flags
    from ml_collections import config_flags

    argv = ["bitjax.sweep", *flag_list]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
    except flags.Error as e:  # a failing config file arrives as its traceback; its last line is the error
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if "Traceback" in str(e) else str(e)
        raise errors.UserError(msg) from None
    except KeyError as e:
        raise errors.UserError(f"unknown config field {e.args[0] if e.args else e}") from None
    except (AttributeError, TypeError, ValueError) as e:
        raise errors.UserError(str(e)) from None
    return fv.config


def _split_config(spec: str) -> tuple[str, str]:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise errors.UserError(f"--config {path}: no such file")
    return path, arg


def split_arg(arg: str) -> dict[str, str]:
    """'quant=b158,size=tiny' → {'quant': 'b158', 'size': 'tiny'} (values as typed; '' → {})."""
    return dict(kv.split("=", 1) for kv in arg.split(",") if kv) if arg else {}


def _has_field(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location("bitjax_sweep_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _arguments(get_config) -> set[str]:
    """The argument names a config file's get_config accepts (from its parse_arg error, which lists them)."""
    try:
        get_config("bitjax_sweep_probe=0")
    except ValueError as e:
        m = re.search(r"known: \[([^\]]*)\]", str(e))
        if m:
            return {a.strip().strip("'\"") for a in m[1].split(",") if a.strip()}
    return set()


def _no_field(config, path: str) -> str:
    """'config.optim has no field 'lrr' (did you mean 'lr'?)': where `path` leaves the config tree."""
    import difflib

    node, parents = config, []
    for part in path.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            where = ".".join(["config", *parents])
            near = difflib.get_close_matches(part, keys, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; its fields: {', '.join(sorted(keys))}"
            return f"{where} has no field {part!r}{hint}"
        node, parents = node[part], [*parents, part]
    return f"config.{path} is not a field"


def parse_grid(text: str) -> tuple[str, list[str]]:
    """'quant=fp,b158' → ('quant', ['fp', 'b158'])."""
    key, eq, values = text.partition("=")
    vals = [v for v in values.split(",") if v]
    if not eq or not key or not vals:
        raise errors.UserError(f"--grid {text!r}: expected KEY=V1,V2,… (e.g. quant=fp,b158 or optim.lr=1e-3,3e-3)")
    return key.strip(), vals


def safe_name(values: dict[str, str]) -> str:
    """A stable, filesystem-safe point name: 'quant=b158,seed=1' (other characters → '_')."""
    return ",".join(
        re.sub(r"[^A-Za-z0-9._+-]", "_", f"{k}") + "=" + re.sub(r"[^A-Za-z0-9._+-]", "_", v) for k, v in values.items()
    )


def make_points(config_spec: str, grids: list[tuple[str, list[str]]], fixed: list[tuple[str, str]] = ()):
    """The product of `grids` as Points (first grid slowest). `fixed`: (field, value) for every point.

    A key is a config argument when the config file accepts it (`get_config('KEY=V')` does not fail
    on it), else a config field (`config.` prefix optional; `seed` = config.seed); every point's
    config is built here, so a bad key or value fails before anything trains.
    """
    path, base_arg = _split_config(config_spec)
    base = build_config([f"--config={config_spec}"] + [f"--config.{k}={v}" for k, v in fixed])
    get_config = _load_module(path).get_config
    kinds = {}
    for key, values in grids:
        field = key.removeprefix("config.")
        if key.startswith("config."):
            kinds[key] = ("field", field)
            continue
        try:
            get_config(",".join(f"{k}={v}" for k, v in {**split_arg(base_arg), key: values[0]}.items()))
            kinds[key] = ("arg", key)
        except ValueError as e:  # not an argument (or a bad value of one): a field, if there is one
            if not _has_field(base, field):
                args = _arguments(get_config)
                if "." in key:  # a field path that does not exist
                    raise errors.UserError(f"--grid {key}: {_no_field(base, field)}") from None
                if key not in args:
                    known = f" (its arguments: {', '.join(sorted(args))})" if args else ""
                    raise errors.UserError(
                        f"--grid {key}: not an argument of {path}{known}, and {_no_field(base, field)}"
                    ) from None
                raise errors.UserError(f"--grid {key}={values[0]}: {errors.one_line(e)}") from None
            kinds[key] = ("field", field)
    targets = [kinds[k] for k, _ in grids]  # 'seed' and 'config.seed' are one field
    twice = sorted({f"{kind} {t}" for kind, t in targets if targets.count((kind, t)) > 1})
    if twice:
        raise errors.UserError(f"--grid: {', '.join(twice)} is set by two --grid flags; give it one")
    points = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grids]):
        values = dict(combo)
        arg = split_arg(base_arg)
        overrides = list(fixed)
        for k, v in combo:
            kind, target = kinds[k]
            if kind == "arg":
                arg[k] = v
            else:
                overrides = [(f, x) for f, x in overrides if f != target] + [(target, v)]
        name = safe_name({(kinds[k][1] if kinds[k][0] == "field" else k): v for k, v in values.items()})
        points.append(Point(name or "base", values, path, ",".join(f"{k}={v}" for k, v in arg.items()), overrides))
    names = [p.name for p in points]
    if len(set(names)) < len(names):
        raise errors.UserError(f"two points share a directory name: {names}")
    from bitjax.run import config as train_config
    from bitjax.run import mesh as mesh_lib

    for p in points:  # every point parses and validates now, not after hours of the earlier ones
        c = p.config()
        with errors.as_user_errors():
            try:
                train_config.validate(c, mesh_lib.make_mesh(c.mesh))
            except ValueError as e:
                raise ValueError(f"point {p.name}: {e}") from None
    return points


def shard(points: list[Point], spec: str | None) -> list[Point]:
    """'i/n' → every n-th point from the i-th (0 ≤ i < n)."""
    if not spec:
        return points
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise errors.UserError(f"--shard {spec!r}: expected i/n with 0 ≤ i < n, e.g. 0/4")
    return points[int(m[1]) :: int(m[2])]


# ============================================================================ running
def _metrics_rows(wd: str) -> list[dict]:
    path = os.path.join(wd, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a row torn by a kill: the trainer drops it on resume
                pass
    return rows


def finished(wd: str, total_steps: int) -> bool:
    """The run in `wd` saved its final step and logged its final eval."""
    rows = _metrics_rows(wd)
    return (
        os.path.isdir(os.path.join(wd, "checkpoints", str(total_steps)))
        and bool(rows)
        and rows[-1].get("step") == total_steps
        and rows[-1].get("eval_bpb") is not None
    )


RECORD = "sweep_point.json"  # in each point's directory: the full config the point was started with


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_record(point: Point, wd: str, config) -> None:
    """UserError when `wd` holds a run this point started with another config (a rerun with changed flags):
    its results would be reported as the new settings'. Fields that differ are named."""
    path = os.path.join(wd, RECORD)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _flat(json.load(f))
    now = _flat(json.loads(json.dumps(config.to_dict(), default=str)))
    diffs = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in diffs[:4])
        more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise errors.UserError(
            f"point {point.name}: {wd} holds a run of another config ({shown}{more}): "
            f"use another --workdir, or delete {wd} to train it again"
        )


def run_point(point: Point, workdir: str, config=None) -> dict | None:
    """Trains `point` in workdir/<name> unless finished there (resuming an interrupted run).

    Returns the trainer's final metrics, or None when the point was already finished. A point started
    afresh records its config (RECORD) so that a rerun with other flags is refused, not skipped.
    """
    from bitjax.train import trainer  # jax only when something trains

    config = point.config() if config is None else config
    wd = os.path.join(workdir, point.name)
    check_record(point, wd, config)
    if finished(wd, config.total_steps):
        print(f"=== {point.name}: finished in {wd}, skipped")
        return None
    print(f"\n=== {point.name} → {wd}")
    if not os.path.isdir(os.path.join(wd, "checkpoints")) and not os.path.exists(os.path.join(wd, RECORD)):
        os.makedirs(wd, exist_ok=True)
        with open(os.path.join(wd, RECORD), "w") as f:
            json.dump(config.to_dict(), f, indent=1, default=str)
    return trainer.train(config, wd)


# ============================================================================ results
def point_result(point: Point, workdir: str, config=None) -> dict | None:
    """Final metrics of a finished point from its metrics.jsonl, None if not finished.

    step_time_s: the median over logged intervals of seconds per step (tokens/s → s/step), without the
    file's first interval (it includes compilation), as the trainer's own step_time_s.
    train_loss and the curve are the label cross-entropy: a distilled run (config.distill) logs its
    objective as train_loss and the label CE as label_loss, and only the latter compares across runs.
    """
    config = point.config() if config is None else config
    wd = os.path.join(workdir, point.name)
    check_record(point, wd, config)
    if not finished(wd, config.total_steps):
        return None
    rows = _metrics_rows(wd)
    last = rows[-1]
    tokens = config.batch_size * config.seq_len
    times = [tokens / r["tokens_per_s"] for r in rows[1:] if r.get("tokens_per_s")]
    out = {"point": point.name, **point.values, "step": last["step"]}
    label = lambda r: r.get("label_loss", r.get("train_loss"))
    out.update({k: last.get(k) for k in METRICS if k not in ("train_loss", "step_time_s")})
    out["train_loss"] = label(last)
    out["step_time_s"] = statistics.median(times) if times else None
    out["curve"] = [(r["step"], label(r)) for r in rows if label(r) is not None]
    return out


def _fp_reference(results: list[dict], keys: list[str]) -> dict[str, float]:
    """point → its step time / that of the fp point with the same other grid values (where one exists)."""
    qkey = next((k for k in keys if k.removeprefix("config.") in QUANT_KEYS), None)
    if qkey is None:
        return {}
    fp = {tuple((k, r[k]) for k in keys if k != qkey): r["step_time_s"] for r in results if r[qkey] == "fp"}
    out = {}
    for r in results:
        ref = fp.get(tuple((k, r[k]) for k in keys if k != qkey))
        if ref and r["step_time_s"]:
            out[r["point"]] = r["step_time_s"] / ref
    return out


def _mean_std(xs: list[float], fmt: str) -> str:
    from bitjax import stats

    return stats.mean_std(xs, fmt)


def write_results(points: list[Point], workdir: str, failed: dict[str, str] | None = None) -> list[dict]:
    """WORKDIR/results.csv, results.md and the plots, over the finished points; returns their results.

    failed: point name → why it stopped (a diverged run), listed under the table."""
    results = [r for r in (point_result(p, workdir) for p in points) if r is not None]
    keys = list(points[0].values) if points else []
    ratio = _fp_reference(results, keys)
    for r in results:
        r["step_time_vs_fp"] = ratio.get(r["point"])
    os.makedirs(workdir, exist_ok=True)
    cols = ["point", *keys, "step", *METRICS] + (["step_time_vs_fp"] if ratio else [])
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)

    group_keys = [k for k in keys if k.removeprefix("config.") not in SEED_KEYS]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in group_keys), []).append(r)
    head = [*group_keys, "runs", "final train loss", "eval loss (nats/token)", "eval bits/byte", "tokens/s"]
    if ratio:
        head.append("step time / fp's (same other grid values)")
    lines = [
        (
            f"{len(results)} of {len(points)} points finished; mean ± std over "
            f"{', '.join(k for k in keys if k not in group_keys) or 'one run'}."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for g, rs in groups.items():
        cells = [
            *g,
            str(len(rs)),
            _mean_std([r["train_loss"] for r in rs], ".4f"),
            _mean_std([r["eval_loss"] for r in rs], ".4f"),
            _mean_std([r["eval_bpb"] for r in rs], ".4f"),
            _mean_std([r["tokens_per_s"] for r in rs], ".0f"),
        ]
        if ratio:
            cells.append(_mean_std([r["step_time_vs_fp"] for r in rs], ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "Failed (not in the table):"] + [f"- {name}: {why}" for name, why in failed.items()]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(results, groups, group_keys, workdir)
    return results


def seed_curves(rs: list[dict]) -> tuple[list[int], list[list[float]]]:
    """The steps every run in `rs` (point_result dicts) logged, and each run's train loss at them."""
    curves = [dict(r["curve"]) for r in rs if r["curve"]]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return steps, [[c[s] for s in steps] for c in curves]


def plot(results, groups, group_keys, workdir):
    """loss_curves.png (one seed-averaged line per group) and eval_bpb.png (mean ± std) in workdir.

    results: point_result dicts; groups: {group values: [results]}; group_keys: the names of those values.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'bitjax[plots]'): no plots", file=sys.stderr)
        return
    if not results:
        return
    # One line per setting (seeds averaged, their min–max shaded): 30 single-run lines are unreadable.
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for g, rs in groups.items():
        steps, ys = seed_curves(rs)
        if not steps:
            continue
        mean = [statistics.mean(col) for col in zip(*ys)]
        label = ", ".join(g) or "all"
        (line,) = ax.plot(steps, mean, label=f"{label} (n={len(ys)})", lw=1.2, marker="o" if len(steps) < 3 else None)
        if len(ys) > 1:
            ax.fill_between(
                steps,
                [min(col) for col in zip(*ys)],
                [max(col) for col in zip(*ys)],
                color=line.get_color(),
                alpha=0.15,
                lw=0,
            )
    ax.set(xlabel="step", ylabel="train loss (nats/token)", title="loss curves (mean over seeds, min–max shaded)")
    ax.legend(fontsize=7, title=", ".join(group_keys) or None, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "loss_curves.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups)), 4))
    labels, means, stds = [], [], []
    for g, rs in groups.items():
        xs = [r["eval_bpb"] for r in rs if r["eval_bpb"] is not None]
        labels.append(", ".join(g) or "all")  # the values; the keys are the axis title
        means.append(statistics.mean(xs) if xs else float("nan"))
        stds.append(statistics.stdev(xs) if len(xs) > 1 else 0.0)
    ax.errorbar(range(len(means)), means, yerr=stds, fmt="o", capsize=4)  # points: no bar from an arbitrary 0
    for i, (g, rs) in enumerate(groups.items()):  # every seed: 3 runs are too few to hide behind a bar
        ax.plot([i + 0.1] * len(rs), [r["eval_bpb"] for r in rs], ".", color="k", ms=3)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    n = sorted({len(rs) for rs in groups.values()})
    ax.set(
        xlabel=", ".join(group_keys) or "run",
        ylabel="eval bits/byte (lower is better)",
        title=f"eval bits/byte, mean ± sample std over seeds (n={'/'.join(map(str, n))})",
    )
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "eval_bpb.png"), dpi=120)
    plt.close(fig)


# ============================================================================ studies
# experiments/<study>/combine.py builds results.md and the plots from the committed results.csv alone
# (one row per point and seed), with these helpers and bitjax.stats; tests/test_studies.py re-runs each.

# One colour per method, the same in every panel and study (matplotlib's tab10/tab20 entries).
METHOD_COLORS = {
    "fp": "#7f7f7f",
    "b158": "#1f77b4",
    "bitnet": "#d62728",
    "a48": "#2ca02c",
    "fbi": "#ff7f0e",
    "onebit": "#9467bd",
    "pb_llm": "#8c564b",
    "rtn2": "#e377c2",
    "rtn3": "#bcbd22",
    "rtn4": "#17becf",
    "rtn": "#f7b6d2",
    "gptq": "#aec7e8",
    "billm": "#ffbb78",
    "omniquant": "#17375e",
    "decoupleq": "#ad494a",
    "efficientqat": "#637939",
    "efficientqat_e2e": "#b5cf6b",
    "bitnet_v2_a8": "#7b4173",
    "bitnet_v2": "#ce6dbd",
    "paretoq": "#e6550d",
}
_EXTRA_COLORS = ["#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79"]


def color(name: str, others: list[str] | None = None) -> str:
    """The method's colour (METHOD_COLORS); a name not there gets the next spare colour by its place in
    `others` (the study's list of such names, so a study's own labels keep one colour across panels)."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    others = [o for o in (others or [name]) if o not in METHOD_COLORS]
    return _EXTRA_COLORS[others.index(name) % len(_EXTRA_COLORS)] if name in others else _EXTRA_COLORS[0]


def read_csv(path: str, numeric=METRICS + ("step_time_vs_fp", "eval_ppl", "fp_eval_bpb")) -> list[dict]:
    """A study's results.csv as dicts; the `numeric` columns as floats (None where empty), the rest strings."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in r:
            if k in numeric:
                r[k] = float(r[k]) if r[k] not in ("", None) else None
    return rows


def write_csv(path: str, cols: list[str], rows: list[dict]) -> None:
    """rows (dicts with exactly `cols`) as a csv with a header row; says how many it wrote."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} runs → {path}")


def write_markdown(out: str, lines: list[str], name: str = "results.md") -> None:
    """OUT/name holding `lines`, one per line (OUT made if missing)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
        f.write("\n".join(lines) + "\n")


def save_fig(fig, path: str) -> None:
    """A study's figure as PNG (tight layout, 120 dpi), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def group_rows(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """rows grouped by the values of `keys`, in first-seen order."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def points_panel(ax, labels: list[str], values: list[list[float]], colors: list[str], fp: list[float] | None = None):
    """Mean ± sample std of each label (error bars), every seed as a dot, and fp's mean ± std as a band."""
    from bitjax import stats

    if fp:
        m = statistics.mean(fp)
        s = statistics.stdev(fp) if len(fp) > 1 else 0.0
        ax.axhspan(m - s, m + s, color="grey", alpha=0.2, lw=0, label=f"fp mean ± std (n={len(fp)})")
        ax.axhline(m, color="grey", lw=0.8)
    for i, (ys, c) in enumerate(zip(values, colors)):
        ys = stats._clean(ys)
        ax.errorbar(
            [i], [statistics.mean(ys)], yerr=[statistics.stdev(ys) if len(ys) > 1 else 0.0], fmt="o", color=c, capsize=4
        )
        ax.plot([i + 0.12] * len(ys), ys, ".", color="k", ms=3)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)


def table(groups: dict[tuple, list[dict]], headers: list[str], metrics: list[tuple[str, str, str]]) -> list[str]:
    """Markdown rows: the group's values, n, then mean ± sample std of each (column, header, format)."""
    from bitjax import stats

    lines = ["| " + " | ".join([*headers, "n", *(h for _, h, _ in metrics)]) + " |"]
    lines.append("|" + "---|" * (len(headers) + 1 + len(metrics)))
    for g, rs in groups.items():
        cells = [*g, str(len(rs)), *(stats.mean_std([r[c] for r in rs], f) for c, _, f in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pyplot():
    """matplotlib.pyplot with the Agg backend, or None (and a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'bitjax[plots]'): no plots", file=sys.stderr)
        return None
    return plt


# ============================================================================ CLI
@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m bitjax.sweep --config FILE[:ARG] --grid KEY=V1,V2 … --workdir DIR [--config.FIELD=VALUE …]",
    )
    p.add_argument("--config", required=True, help="config file and argument, e.g. configs/transformer.py:size=tiny")
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,… (repeatable: the product)")
    p.add_argument("--workdir", required=True, help="each point runs in WORKDIR/<point name>")
    p.add_argument("--shard", default=None, help="i/n: run every n-th point from the i-th")
    p.add_argument("--print_commands", action="store_true", help="print one bitjax.main command per point")
    p.add_argument("--collect", action="store_true", help="only write the results of the finished points")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    fixed = []
    for r in rest:  # --config.a.b=V, one token each
        m = re.fullmatch(r"--config\.([\w.]+)=(.*)", r, re.DOTALL)
        if not m:
            raise errors.UserError(f"unrecognized argument {r!r} (fields are set as --config.FIELD=VALUE)")
        fixed.append((m[1], m[2]))
    grids = [parse_grid(g) for g in args.grid]
    if not grids:
        mod = _load_module(_split_config(args.config)[0])
        if not hasattr(mod, "get_sweep"):
            raise errors.UserError(f"no --grid given and {args.config.partition(':')[0]} has no get_sweep()")
        grids = [(k, [str(v) for v in vs]) for k, vs in mod.get_sweep().items()]
    points = make_points(args.config, grids, fixed)
    mine = shard(points, args.shard)
    if args.print_commands:
        for pt in mine:
            print(pt.command(args.workdir))
        return points
    configs = {pt.name: pt.config() for pt in points}
    for pt in points:  # a rerun with other flags is refused before anything trains
        check_record(pt, os.path.join(args.workdir, pt.name), configs[pt.name])
    failed = {}
    if not args.collect:
        for i, pt in enumerate(mine):
            print(f"\n[{i + 1}/{len(mine)}] ", end="")
            config = configs[pt.name]
            try:
                out = run_point(pt, args.workdir, config)
            except FloatingPointError as e:  # a diverged point is an outcome: record it, train the others
                failed[pt.name] = errors.one_line(e)
                print(f"\n{pt.name} diverged ({failed[pt.name]}); going on with the other points")
                continue
            if out is not None and not finished(os.path.join(args.workdir, pt.name), config.total_steps):
                # the trainer stopped early and checkpointed (SIGTERM/SIGINT): so does the sweep
                print(f"\n{pt.name} stopped before step {config.total_steps}; the same command resumes the sweep")
                break
    results = write_results(points, args.workdir, failed)
    with open(os.path.join(args.workdir, "results.md")) as f:
        print("\n" + f.read())
    print(
        f"wrote {args.workdir}/results.csv, results.md"
        + ("" if not results else " (+ plots where matplotlib is installed)")
    )
    if failed:
        raise FloatingPointError(f"{len(failed)} point(s) diverged: {', '.join(failed)} (see results.md)")
    return results


if __name__ == "__main__":
    main()
