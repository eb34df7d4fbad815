"""A run folder is owned by one process at a time: ``<out>/run.lock`` holds its pid and host. The
same lock keeps two ``avs world`` from writing into one folder at once.

``RunLock(folder).acquire()`` creates the lock file with ``O_CREAT | O_EXCL`` (atomic on a local or
NFSv3+ file system), so of two ``avs train`` started into the same folder exactly one gets it; the
other raises ``RunLocked`` at once, naming the owner (pid, host, since when).

A lock whose owner is gone is *stale*: on the same host, a pid that no longer runs (or now belongs
to a process started later, i.e. a reused pid); under torchrun, a lock written by an earlier attempt
of the same elastic job (same ``TORCHELASTIC_RUN_ID``), whose rank 0 may have moved to another node.
A stale lock is reported in one line and taken over. A lock held on another host cannot be checked
from here: the error says so, and how to remove it once that run is known to be gone.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path

LOCK_NAME = "run.lock"


class RunLocked(ValueError):
    """The run folder is owned by another live process (or one on another host)."""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat(5), counted after the command name
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def owner_record() -> dict:
    """Who we are: pid, host, process start, start time, and the elastic job, if any."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_start": _process_start(pid),
            "since": dt.datetime.now().isoformat(timespec="seconds"),
            "elastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID")}


def describe_owner(owner: dict) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"


def stale_reason(owner: dict) -> str | None:
    """Why the lock's owner is gone, or None when it may still be running."""
    here = socket.gethostname()
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none" and owner.get("elastic_run_id") == elastic and owner.get("pid") != os.getpid():
        return f"an earlier attempt of the same torchrun job ({elastic})"
    if owner.get("host") != here:
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return f"pid {pid} no longer runs"
    start = owner.get("process_start")
    if start is not None and _process_start(pid) not in (None, start):
        return f"pid {pid} now belongs to another process"
    return None


class RunLock:
    """``with RunLock(folder):`` owns ``folder`` for the block (released on exit, also on an error)."""

    def __init__(self, folder: str | Path, log=None, elsewhere: str = "choose another out="):
        self.path = Path(folder) / LOCK_NAME
        self.elsewhere = elsewhere  # how the refusal says to go elsewhere (the option of the command)
        # a stale lock taken over is said on stderr, whatever the progress setting
        self.log = log or (lambda text: print(f"note: {text}", file=sys.stderr, flush=True))
        self.held = False

    def read_owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(owner_record()))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            owner = self.read_owner()
            if not owner:  # being written this instant, or a torn file from a crash
                import time

                time.sleep(0.2)
                owner = self.read_owner()
                if not owner:
                    self._take_over("an unreadable lock file (its writer died while writing it)", {})
                    continue
            reason = stale_reason(owner)
            if reason is None:
                where = ("" if owner.get("host") == socket.gethostname() else
                         f"; it runs on another host, so this one cannot tell whether it is alive: if that run is "
                         f"gone, delete {self.path}")
                raise RunLocked(f"{self.path.parent} is in use by another run ({describe_owner(owner)}){where}; "
                                f"wait for it to finish or {self.elsewhere}")
            self._take_over(f"a stale lock ({describe_owner(owner)}: {reason})", owner)
        raise RunLocked(f"could not take {self.path}: other processes keep taking it; {self.elsewhere}")

    def _take_over(self, what: str, stale: dict) -> None:
        # Move the lock aside first and look at what was moved: when two processes take over the same
        # stale lock, the slower one may move the lock the faster one has just created; it puts that
        # one back (os.link fails rather than overwrite) and both then race fairly on O_EXCL.
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved != stale:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.log(f"{self.path.parent}: removed {what}")

    def release(self) -> None:
        if self.held:
            owner = self.read_owner()
            if owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
