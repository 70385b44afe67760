"""What a run writes as it trains: metrics.jsonl and TensorBoard events (process 0), and the console progress."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

log = logging.getLogger("bitjax")


def jsonable_metrics(metrics: dict) -> dict:
    """NaN/Inf floats → None, so the output is strict JSON (json.dumps would write a bare NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def truncate_metrics(path: str, step: int) -> int:
    """Drops the rows of metrics.jsonl after `step` (and a torn last line); returns how many were dropped.

    A run resumed from a checkpoint older than its last logged row (a SIGKILL, a damaged or deleted
    checkpoint) logs those steps again: without this, they would appear twice.
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a row cut short by a kill: drop it
            pass
    if len(keep) < len(lines):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in keep))
        os.replace(tmp, path)  # atomic: a crash now leaves either the old or the new file
    return len(lines) - len(keep)


def last_logged(workdir: str) -> dict:
    """The last row of `workdir`/metrics.jsonl ({} if none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    return json.loads(lines[-1]) if lines else {}


class MetricsWriter:
    """metrics.jsonl (one JSON object per log step) + TensorBoard events, process 0 only.

    `start`: the step the run (re)starts from; rows and events logged after it by an earlier attempt
    are dropped, so each step appears once.
    """

    def __init__(self, workdir: str, enabled: bool, start: int = 0):
        self.enabled = enabled
        self._tb = None
        if enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            dropped = truncate_metrics(path, start)
            if dropped:
                log.warning(
                    "dropped %d row(s) after step %d from %s: this run logs those steps again", dropped, start, path
                )
            self._jsonl = open(path, "a")  # noqa: SIM115 (open for the writer's life; close() closes it)
            try:
                from tensorboardX import SummaryWriter

                # purge_step: TensorBoard discards the earlier attempt's events from that step on
                self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start + 1)
            except ImportError:  # TensorBoard events are optional
                log.warning("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **jsonable_metrics(metrics)}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def close(self):
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


class Progress:
    """Console progress: step, loss, tokens/s and ETA (a live bar on a terminal)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start, self.enabled = total, start, enabled
        self.tty = enabled and sys.stdout.isatty()
        self.t0 = time.perf_counter()

    def update(self, step: int, msg: str, force_line: bool = False):
        if not self.enabled:
            return
        done = step - self.start
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        frac = step / self.total
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        line = f"[{bar}] {step}/{self.total} {msg} ETA {eta_s}"
        if self.tty and not force_line:
            print("\r" + line, end="", flush=True)
        else:
            print(("\r" if self.tty else "") + line, flush=True)
