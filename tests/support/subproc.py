"""`quota-server --config FILE` as a real subprocess on a free port, for end-to-end tests.

The helper writes the TOML file, starts the process, waits for gRPC health SERVING, and can send
it a signal (SIGKILL, SIGTERM) and start it again on the same data. Each start logs to its own
file so that a failure shows what the server printed.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .config import to_toml

START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command() -> list[str]:
    """The installed console script; `python -m quota_server.main` only if it is not installed."""
    script = shutil.which("quota-server")
    if script is not None:
        return [script]
    return [sys.executable, "-m", "quota_server.main"]


async def health_status(target: str, service: str = "", timeout_s: float = 1.0) -> int | None:
    """The health status of `service` at `target`, or None if the server does not answer."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return None
        return response.status


class ServerProcess:
    """One server's config, data directory and (re)started process."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, name: str = "server") -> None:
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "listen": f"127.0.0.1:{self.port}"}}
        self.config = config
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(to_toml(config))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for it to serve."""
        self.starts += 1
        self.log_path = self.workdir / f"{self.name}-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*server_command(), "--config", str(self.config_path), "--log-level", "INFO"],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self.proc

    async def start(self) -> ServerProcess:
        """Start and wait until health says SERVING (fails with the server's output if it exits)."""
        self.spawn()
        await self.wait_serving()
        return self

    async def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before serving:\n{self.output()}")
            if await health_status(self.target) == health_pb2.HealthCheckResponse.SERVING:
                return
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} not SERVING after {timeout_s}s:\n{self.output()}")
            await asyncio.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """The exit status once the process is gone (negative: killed by that signal)."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.proc.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout_s}s:\n{self.output()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and wait for the process to be gone."""
        self.send_signal(sig)
        return await self.wait_exit()

    async def restart(self) -> ServerProcess:
        """Start a new process on the same config and data (the previous one must be gone)."""
        assert self.proc is None or self.proc.poll() is not None, "still running"
        return await self.start()

    def output(self) -> str:
        """What the current (or last) process printed."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        """Kill the process if it is still running (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=EXIT_TIMEOUT_S)


def run_once(workdir: Path, config_text: str, *, timeout_s: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `quota-server --config FILE` with a config that must make it exit (e.g. a bad one)."""
    path = workdir / "bad.toml"
    path.write_text(config_text)
    return subprocess.run([*server_command(), "--config", str(path)], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout_s)
