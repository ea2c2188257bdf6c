"""Generates the ``ratify.v1`` stubs from the repository's ``proto/`` and imports them.

The stubs are never committed: on first import they are generated with grpcio-tools
into ``$RATIFY_PY_STUBS`` (default: ``examples/python/gen``), written to a temporary
folder and renamed into place so concurrent processes never see half a package.
Generated code imports ``ratify.v1.*`` as a top-level package, so that folder is put
on ``sys.path``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

#: The .proto files of the public contract (raft.proto is internal and not needed).
PROTO_FILES = (
    "ratify/v1/common.proto",
    "ratify/v1/coordinator.proto",
    "ratify/v1/participant.proto",
)

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parents[2]


def proto_root() -> Path:
    """The folder that holds ``ratify/v1/*.proto`` (``$RATIFY_PROTO_DIR`` overrides)."""
    return Path(os.environ.get("RATIFY_PROTO_DIR", _REPO_ROOT / "proto" / "proto"))


def stubs_dir() -> Path:
    """Where generated stubs live (``$RATIFY_PY_STUBS`` overrides)."""
    return Path(os.environ.get("RATIFY_PY_STUBS", _PACKAGE_DIR.parent / "gen"))


def _is_fresh(out: Path, src: Path) -> bool:
    """True when every stub exists and is newer than its .proto."""
    for proto in PROTO_FILES:
        stem = proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            stub = out / f"{stem}{suffix}"
            if not stub.exists() or stub.stat().st_mtime < (src / proto).stat().st_mtime:
                return False
    return True


def generate(out: Path | None = None) -> Path:
    """Generates the stubs into ``out`` (default :func:`stubs_dir`) unless fresh.

    Raises:
        RuntimeError: protoc failed (the message carries its exit code).
    """
    from grpc_tools import protoc  # imported lazily: only generation needs it

    out = out or stubs_dir()
    src = proto_root()
    if _is_fresh(out, src):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stubs-", dir=out.parent))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{include}",
        f"--python_out={tmp}",
        f"--pyi_out={tmp}",
        f"--grpc_python_out={tmp}",
        *PROTO_FILES,
    ]
    code = protoc.main(args)
    if code != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"protoc failed with exit code {code} on {src}")
    for pkg in (tmp / "ratify", tmp / "ratify" / "v1"):
        (pkg / "__init__.py").touch()
    old = out.with_name(out.name + f".old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _load(name: str) -> ModuleType:
    """Imports ``ratify.v1.<name>`` from the generated stubs."""
    return importlib.import_module(f"ratify.v1.{name}")


_out = generate()
if str(_out) not in sys.path:
    sys.path.insert(0, str(_out))

common_pb2 = _load("common_pb2")
coordinator_pb2 = _load("coordinator_pb2")
coordinator_pb2_grpc = _load("coordinator_pb2_grpc")
participant_pb2 = _load("participant_pb2")
participant_pb2_grpc = _load("participant_pb2_grpc")

__all__ = [
    "common_pb2",
    "coordinator_pb2",
    "coordinator_pb2_grpc",
    "participant_pb2",
    "participant_pb2_grpc",
    "generate",
]
