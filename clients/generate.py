"""Regenerate the quota.v1 stubs (clients/quota/v1) from protos/quota/v1/*.proto.

Usage, from anywhere: ``python clients/generate.py``. Needs grpcio-tools. The stubs are
committed so that the client installs without a protobuf compiler; a test fails when they
are stale.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
CLIENTS = ROOT / "clients"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The .proto files of the API, in a stable order."""
    return sorted((PROTOS / "quota" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into out_dir/quota/v1 and return the generated files.

    Stale generated files are removed first, so a deleted proto leaves nothing behind.
    """
    from grpc_tools import protoc

    stub_dir = out_dir / "quota" / "v1"
    stub_dir.mkdir(parents=True, exist_ok=True)
    for old in stub_dir.iterdir():
        if old.name.endswith(GENERATED_SUFFIXES):
            old.unlink()
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p for p in stub_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else CLIENTS
    for path in generate(target):
        print(path.relative_to(target))
