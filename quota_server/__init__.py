"""The quota-and-credit authorization server.

Importing the package switches gRPC's fork handlers off unless the environment says otherwise:
snapshots are serialized by a forked child (snapshotter.py) that never touches gRPC, and
gRPC's handlers, on by default in grpcio releases since 1.78, run around that fork and kill
the child (SIGSEGV) now and then. gRPC reads GRPC_ENABLE_FORK_SUPPORT when it is first
imported, so this only works if it runs first; `GRPC_FORK_HANDLERS_OFF` says whether it did
(if not, snapshots are taken in the server's own process instead: snapshotter.fork_allowed).
"""
import os as _os
import sys as _sys

_flag = _os.environ.get("GRPC_ENABLE_FORK_SUPPORT")
if _flag is None and "grpc" not in _sys.modules:
    _os.environ["GRPC_ENABLE_FORK_SUPPORT"] = _flag = "0"
GRPC_FORK_HANDLERS_OFF = _flag is not None and _flag.strip().lower() in ("0", "false", "no", "off")
"""True when gRPC was (or will be) imported with its fork handlers switched off."""
