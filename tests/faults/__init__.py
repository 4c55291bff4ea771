"""Fault tests: real quota-server processes on real redis-server processes, broken on purpose.

Each test starts its own redis-server on a free loopback port (tests/storage/redis_proc.py) and
its own `quota-server` subprocess (tests/support/subproc.py), breaks one of them (SIGKILL,
SIGSTOP, a TCP proxy that cuts the connection), and then proves from what the clients saw and
from what Redis holds that nothing acknowledged was lost and nothing was applied twice.
"""
