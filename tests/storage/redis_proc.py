"""A throwaway ``redis-server`` for tests and benchmarks: a real server on a free loopback port.

Reusable by fault tests: ``stop(kill=True)`` is a crash (SIGKILL), ``stop(kill=False)`` a clean
shutdown (SIGTERM), ``pause()``/``resume()`` freeze the process (SIGSTOP/SIGCONT, so clients see
timeouts rather than refused connections), and ``restart()`` starts it again on the same port
and data directory, so whatever it had persisted is loaded back.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisProcess:
    """One redis-server child process bound to 127.0.0.1.

    ``appendfsync`` is "always" by default (every acknowledged write is on disk); pass
    ``appendonly=False`` for a server that keeps nothing on disk, or ``extra_args`` for more.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "always",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.binary = binary
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            *self.extra_args,
        ]

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("redis-server already running")
        self.proc = subprocess.Popen(
            self.args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"redis-server exited at start: {err}{self._log_tail()}")
            if self._ping():
                return
            time.sleep(0.01)
        self.stop(kill=True)
        raise RuntimeError(f"redis-server did not answer PING in {START_TIMEOUT_S}s{self._log_tail()}")

    def stop(self, kill: bool = False) -> None:
        """SIGKILL (a crash) or SIGTERM (a clean shutdown: AOF flushed); waits for the exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def pause(self) -> None:
        """Freeze the server: connections stay open but nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, kill: bool = False) -> None:
        """Stop (crash with ``kill=True``) and start again on the same port and directory."""
        self.stop(kill=kill)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-10:]
        except OSError:
            return ""
        return "\n" + "\n".join(lines)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(kill=True)
