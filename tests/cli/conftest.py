"""Fixtures for the quotactl tests: one real `quota-server` subprocess on a temp SQLite file.

The server is the installed console script (tests/support/subproc.py), run from a temp
directory, with the standard test config of tests/support/config.py. Tests call
`quota_server.cli.main` in-process (exact stdout, stderr and exit status) or run it as a
subprocess where the console behaviour itself is the subject.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..support.config import config_data
from ..support.subproc import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `quota-server` subprocess (tests/support/subproc.py) for the whole CLI suite."""
    workdir = tmp_path_factory.mktemp("quotactl-server")
    proc = ServerProcess(workdir, config_data(workdir / "data" / "quota.db"), name="quotactl")
    try:
        asyncio.run(proc.start())
        yield proc
    finally:
        proc.cleanup()


@dataclass
class Run:
    """The outcome of one quotactl invocation."""

    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)

    def json_lines(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines()]


class Quotactl:
    """Runs `quotactl` in-process against the test server."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, *argv: str) -> Run:
        from quota_server.cli import main

        out, err = io.StringIO(), io.StringIO()
        code = main(["--target", self.target, *argv], stdout=out, stderr=err)
        return Run(code, out.getvalue(), err.getvalue())

    def ok(self, *argv: str) -> Run:
        run = self(*argv)
        assert run.code == 0, run.stderr
        return run

    def json(self, *argv: str):
        return self.ok("--json", *argv).json()


@pytest.fixture
def quotactl(server: ServerProcess) -> Quotactl:
    return Quotactl(server.target)


@pytest.fixture
def account(request: pytest.FixtureRequest) -> str:
    """An account id unique to the test (the server is shared by the session)."""
    return "cli-" + request.node.name.replace("[", ".").replace("]", "").replace("_", "-")[:100]


def run_subprocess(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)
