"""What stops a run cleanly: a preemption signal (checkpoint, then exit) and too many skipped steps."""

from __future__ import annotations

import logging
import signal

from ml_collections import ConfigDict

log = logging.getLogger("bitjax")


class Preemption:
    """SIGTERM/SIGINT → finish the current step, checkpoint, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
            raise KeyboardInterrupt("second interrupt: stopped without a final checkpoint")
        log.warning(
            "received signal %d: checkpointing after this step and stopping (Ctrl-C again to quit at once)", signum
        )
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class SkipWatch:
    """nonfinite='skip': a console warning at each skipped step; stops after too many in a row.

    Each step's `finite` flag is read one step late, so the host never waits for the device. Every
    process checks (the flag is replicated, so all stop at the same step); only `lead` warns.
    """

    def __init__(self, config: ConfigDict, lead: bool):
        self.limit, self.enabled, self.lead = config.max_consecutive_skips, config.nonfinite == "skip", lead
        self.pending, self.in_a_row = None, 0

    def __call__(self, step: int | None = None, finite=None) -> None:
        """Records step `step`'s flag and checks the previous one (no arguments: check the last one)."""
        if not self.enabled:
            return
        prev, self.pending = self.pending, (None if step is None else (step, finite))
        if prev is None:
            return
        if bool(prev[1]):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.lead:
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", prev[0], self.in_a_row)
        if self.in_a_row > self.limit:
            raise FloatingPointError(
                f"{self.in_a_row} steps in a row skipped for non-finite values (more than "
                f"config.max_consecutive_skips={self.limit}) at step {prev[0]}; stopping. Lower "
                f"config.optim.lr or raise config.optim.warmup_steps."
            )
