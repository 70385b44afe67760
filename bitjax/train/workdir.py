"""The workdir: checked before use, and locked so two live runs never write the same one.

The lock is a file `<workdir>/LOCK` holding {host, pid, start} of the run that holds it, created with
O_EXCL. A lock whose process is gone (same host, pid dead or reused by another process) is stale: a
run killed with SIGKILL left it, and the next run takes it over with a warning. A lock from another
host cannot be checked from here, so it is refused with the path to delete if that run is dead.
In multi-process runs only process 0 takes the lock (the trainer tells the others whether it got it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time

from bitjax.errors import UserError

log = logging.getLogger("bitjax")
LOCK_NAME = "LOCK"


def prepare(workdir: str) -> None:
    """Creates `workdir` if needed; a UserError (not a raw OSError) if it cannot be a writable directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir {workdir} cannot be created ({e.strerror}); choose another --workdir") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(
            f"--workdir {workdir} is not writable by this user; choose another --workdir or fix its permissions"
        )


def listing(path: str, marker: str) -> dict[str, int]:
    """{relative path: size} of every file under `path` but the marker (what :func:`seal` records)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if rel != marker:
                out[rel] = os.path.getsize(full)
    return out


def seal(path: str, marker: str) -> None:
    """Records in `path`/`marker` what the tool wrote there: :func:`fresh` replaces only that, unchanged."""
    with open(os.path.join(path, marker), "w") as f:
        json.dump(listing(path, marker), f, indent=0, sort_keys=True)


def replaceable(path: str, marker: str) -> bool:
    """Whether `path` is absent, empty, or marked by a tool and (if sealed) still holds exactly what it wrote."""
    if not os.path.isdir(path) or not os.listdir(path):
        return True
    mark = os.path.join(path, marker)
    if not os.path.isfile(mark):
        return False
    with open(mark) as f:
        text = f.read()
    if not text.strip():  # marked, never sealed (a tool whose output is a run it then trains: compare)
        return True
    try:
        return json.loads(text) == listing(path, marker)
    except ValueError:
        return False


def fresh(path: str, marker: str, refusal: str) -> None:
    """Makes `path` an empty directory marked `marker`, deleting only a directory a tool marked so.

    A non-empty `path` without the marker may hold a user's real run: UserError(`refusal`), nothing
    deleted. A marked one is replaced, unless a live run still holds its lock, or it was sealed
    (:func:`seal`) and holds anything else now (e.g. a run trained on inside a PTQ output, issue 29.2).
    """
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.exists(os.path.join(path, marker)):
            raise UserError(refusal)
        if not replaceable(path, marker):
            raise UserError(
                f"{path} holds more than the tool wrote there (a run trained on in it?); nothing was deleted. "
                "Choose another output directory."
            )
        with Lock(path):  # refuses if a run is still writing there
            pass
        shutil.rmtree(path)
    prepare(path)
    open(os.path.join(path, marker), "w").close()


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where /proc can't tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the process that wrote the lock `owner` (on this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():  # our own pid: a previous life of this process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    start = _proc_start(pid)  # a pid reused by an unrelated process does not hold the lock
    return start is None or owner.get("start") in (None, start)


class Lock:
    """`<workdir>/LOCK` held from `acquire()` to `release()` (a context manager)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _proc_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.me, f)
        return True

    def _owner(self) -> dict:
        try:
            with open(self.path) as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):  # empty or torn: the writer died between create and write
            return {}

    def acquire(self) -> Lock:
        workdir = os.path.dirname(self.path)
        for _ in range(3):  # a competing run may take over the same stale lock at the same moment
            if self._create():
                self.held = True
                return self
            owner = self._owner()
            same_host = owner.get("host") == self.me["host"]
            if owner and not same_host:
                raise UserError(
                    f"{workdir} is in use by pid {owner.get('pid')} on host {owner.get('host')} (since "
                    f"{owner.get('since')}). If that run is dead, delete {self.path} and start again."
                )
            if owner and _alive(owner):
                raise UserError(
                    f"{workdir} is in use by a live run (pid {owner['pid']}, since {owner.get('since')}); "
                    f"wait for it to finish or stop it, or use another --workdir."
                )
            log.warning("taking over the stale lock %s of a run that is gone (%s)", self.path, owner or "empty")
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        raise UserError(f"could not take the lock {self.path}: another run keeps taking it")

    def release(self) -> None:
        if self.held and self._owner().get("pid") == self.me["pid"]:
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
