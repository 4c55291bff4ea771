"""holder_died_here: when a lease holder named host:pid:tag is known to be gone (Redis lets a
restart on the same host take the lease over at once, instead of waiting for its TTL)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from quota_server.storage.base import holder_died_here

HOST = socket.gethostname()


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _state(pid: int) -> bytes:
    stat = open(f"/proc/{pid}/stat", "rb").read()
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]


def _wait_state(pid: int, want: bytes) -> None:
    for _ in range(500):
        if _state(pid) == want:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never reached state {want!r}")


def test_a_reaped_process_is_gone():
    child = _child()
    child.kill()
    child.wait()
    assert holder_died_here(f"{HOST}:{child.pid}:abcd1234")


def test_a_killed_process_not_yet_reaped_is_gone():
    child = _child()
    os.kill(child.pid, signal.SIGKILL)
    _wait_state(child.pid, b"Z")                    # a zombie: dead, its parent has not waited
    try:
        assert holder_died_here(f"{HOST}:{child.pid}:abcd1234")
    finally:
        child.wait()


def test_live_and_stopped_processes_are_not_gone():
    child = _child()
    try:
        assert not holder_died_here(f"{HOST}:{child.pid}:abcd1234")
        child.send_signal(signal.SIGSTOP)
        _wait_state(child.pid, b"T")
        assert not holder_died_here(f"{HOST}:{child.pid}:abcd1234")
    finally:
        child.kill()
        child.wait()


def test_other_hosts_this_process_and_other_names_are_never_taken_for_dead():
    child = _child()
    child.kill()
    child.wait()
    assert not holder_died_here(f"{HOST}-other:{child.pid}:abcd1234")   # another host: cannot tell
    assert not holder_died_here(f"{HOST}:{child.pid}")                  # not host:pid:tag
    assert not holder_died_here(f"{HOST}:pid:abcd1234")
    assert not holder_died_here(f"{HOST}:0:abcd1234")
    assert not holder_died_here("a")


def test_this_pid_is_dead_only_under_a_name_this_process_never_used():
    """A container restarted with the server as pid 1 (same hostname) finds its predecessor's
    lease under its own pid: that holder is gone, unless the name is one this process used."""
    from quota_server.storage.base import note_owner

    mine = f"{HOST}:{os.getpid()}:mine0001"
    note_owner(mine)
    assert not holder_died_here(mine)
    assert holder_died_here(f"{HOST}:{os.getpid()}:earlier1")
