"""The committed stubs match protos/, and the Python enums match the proto enums."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

import quota_client
from quota.v1 import enums_pb2

CLIENTS = Path(__file__).resolve().parent.parent
STUBS = CLIENTS / "quota" / "v1"


def _load_generate():
    spec = importlib.util.spec_from_file_location("generate", CLIENTS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Stubs generated now from protos/, by file name."""
    out = tmp_path_factory.mktemp("stubs")
    return {path.name: path.read_text() for path in _load_generate().generate(out)}


def _committed() -> dict[str, str]:
    return {
        path.name: path.read_text()
        for path in STUBS.iterdir()
        if path.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    }


def _generator_version(sources: dict[str, str]) -> str:
    """The grpcio-tools version stamped in the *_pb2_grpc.py files."""
    for text in sources.values():
        for line in text.splitlines():
            if line.startswith("GRPC_GENERATED_VERSION = "):
                return ast.literal_eval(line.split("=", 1)[1].strip())
    raise AssertionError("no GRPC_GENERATED_VERSION in the stubs")


def _descriptor(source: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto embedded in a generated *_pb2.py, without importing it."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value)
    raise AssertionError("no serialized descriptor found")


def test_committed_stubs_describe_the_current_protos(fresh: dict[str, str]) -> None:
    """Same files, and each embeds the same descriptor as protos/ compiles to today.

    Fails when a .proto changed without `python clients/generate.py`. It compares
    descriptors, so it holds whatever grpcio-tools version is installed.
    """
    committed = _committed()
    assert sorted(committed) == sorted(fresh), "run: python clients/generate.py"
    for name in (n for n in fresh if n.endswith("_pb2.py")):
        assert _descriptor(committed[name]) == _descriptor(fresh[name]), (
            f"{name} is stale: run python clients/generate.py"
        )


def test_committed_stubs_are_byte_identical_with_the_same_generator(
    fresh: dict[str, str],
) -> None:
    """With the grpcio-tools version that made them, regenerating changes nothing."""
    committed = _committed()
    made_by, installed = _generator_version(committed), _generator_version(fresh)
    if made_by != installed:
        pytest.skip(
            f"stubs made by grpcio-tools {made_by}, {installed} installed; "
            "the descriptor comparison still guards against stale stubs"
        )
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run python clients/generate.py"


@pytest.mark.parametrize(
    "py_enum",
    [
        quota_client.Decision,
        quota_client.ExpireAction,
        quota_client.LotCategory,
        quota_client.AccountStatus,
        quota_client.QuoteLineKind,
    ],
)
def test_python_enums_mirror_the_proto(py_enum: type) -> None:
    """Every proto value has a member of the same number, named without the prefix."""
    proto = enums_pb2.DESCRIPTOR.enum_types_by_name[py_enum.__name__]
    prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in py_enum.__name__)[1:] + "_"
    expected = {v.name.removeprefix(prefix): v.number for v in proto.values}
    assert {m.name: m.value for m in py_enum} == expected
