"""The run folder's lock: one live run per folder; a dead run's lock is taken over, a live one's never."""

import json
import logging
import os
import socket
import subprocess
import time

import pytest

from efficientnetv2.train import run_lock
from efficientnetv2.train.run_lock import LOCK_FILE, RunLock, RunLocked


def _write_lock(folder, **owner):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(owner, f)
    return path


def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_live_lock_refuses_a_second_run_naming_the_holder(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunLocked, match=rf"in use by another run \(pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # Released on exit.
    with RunLock(str(tmp_path)):  # Free again.
        assert (tmp_path / LOCK_FILE).exists()


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = _dead_pid()
    _write_lock(str(tmp_path), host=socket.gethostname(), pid=pid, start_time=1)
    with caplog.at_level(logging.WARNING), RunLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock.held
    assert f"its process {pid} on this host is gone" in caplog.text


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    # The owner's pid is now this process, but with another start time: the owner is gone.
    _write_lock(str(tmp_path), host=socket.gethostname(), pid=os.getpid(), start_time=-5)
    with RunLock(str(tmp_path)) as lock:
        assert lock.held


def test_another_hosts_lock_is_kept_while_fresh_and_taken_over_when_stale(tmp_path):
    path = _write_lock(str(tmp_path), host="some-other-host", pid=12345, start_time=7)
    with pytest.raises(RunLocked, match="pid 12345 on some-other-host"):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - run_lock.STALE_AFTER_S - 60
    os.utime(path, (old, old))
    with RunLock(str(tmp_path)) as lock:
        assert lock.held


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
    with RunLock(str(tmp_path), heartbeat_s=0.05):
        path = tmp_path / LOCK_FILE
        os.utime(path, (0, 0))
        deadline = time.time() + 10
        while path.stat().st_mtime == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > time.time() - 60


def test_release_leaves_a_lock_that_another_process_took_over(tmp_path):
    lock = RunLock(str(tmp_path))
    lock.acquire()
    _write_lock(str(tmp_path), host="some-other-host", pid=1, start_time=1)
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "some-other-host"
