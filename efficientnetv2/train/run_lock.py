"""One training run per run folder: an exclusive lock file in ``model_dir``.

Two commands training into the same folder at once would interleave their checkpoints and each
resume from the other's. ``RunLock`` creates ``model_dir/run.lock`` with ``O_CREAT | O_EXCL`` (atomic
on a local or NFSv3+ file system) holding the owner's host, pid and process start time, and keeps it
fresh: a background thread touches it every ``HEARTBEAT_S`` seconds.

A lock left behind is taken over, with a warning naming its owner, when its owner is provably gone:

- on this host, when no process has that pid and start time (the start time tells a reused pid
  from the owner);
- on another host (a preempted TPU VM restarted elsewhere), when the lock has not been touched for
  ``STALE_AFTER_S`` seconds: a live owner touches it every ``HEARTBEAT_S``.

Otherwise ``RunLocked`` says who holds the folder. Under multi-worker training only the chief
locks (the workers write no run files). Remote folders (``gs://...``) have no ``O_EXCL``; they are
not locked, and the log says so.
"""

import json
import os
import socket
import threading
import time

from absl import logging

__all__ = ["RunLock", "RunLocked", "LOCK_FILE"]

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class RunLocked(RuntimeError):
    """Another live process trains in this run folder."""


def _start_time(pid):
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid, start_time):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Exists, owned by another user.
    return start_time is None or _start_time(pid) in (None, start_time)


class RunLock:
    """``with RunLock(model_dir): train...`` -- raises ``RunLocked`` when another live run holds it."""

    def __init__(self, model_dir, heartbeat_s=HEARTBEAT_S, stale_after_s=STALE_AFTER_S):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid())}
        self._stop = threading.Event()
        self._thread = None
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        if "://" in self.path:
            logging.info("Run folder %s is remote: not locked (no exclusive create there).",
                         os.path.dirname(self.path))
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        for _ in range(3):
            if self._create():
                break
            holder = self._read()
            reason = self._stale_reason(holder)
            if reason is None:
                raise RunLocked(
                    f"{os.path.dirname(self.path)} is in use by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, lock {self.path}); wait for it, or use another --model_dir. "
                    f"If no run is using the folder, delete {self.path}."
                )
            logging.warning("Taking over the lock %s: %s.", self.path, reason)
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass  # Another starter removed it first; the exclusive create decides.
        else:
            raise RunLocked(f"could not take the lock {self.path}: other processes keep taking it")
        self.held = True
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self):
        if not self.held:
            return
        self._stop.set()
        self._thread.join()
        self.held = False
        holder = self._read()
        if holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def _create(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(self.owner, since=time.strftime("%Y-%m-%d %H:%M:%S")), f)
        return True

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"unreadable": True}

    def _stale_reason(self, holder):
        """Why the lock's holder is gone (a str), or None while it may be alive."""
        if not holder:
            return "it vanished while being read"
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return "it vanished while being read"
        if holder.get("host") == self.owner["host"] and isinstance(holder.get("pid"), int):
            if not _alive(holder["pid"], holder.get("start_time")):
                return f"its process {holder['pid']} on this host is gone"
            return None
        if age > self.stale_after_s:
            who = "an unreadable lock" if holder.get("unreadable") else \
                f"pid {holder.get('pid')} on {holder.get('host')}"
            return f"{who}, not refreshed for {age:.0f} s (a live run refreshes it every {self.heartbeat_s:.0f} s)"
        return None

    def _heartbeat(self):
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError as e:
                logging.warning("Could not refresh the run lock %s: %s", self.path, e)
