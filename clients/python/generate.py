#!/usr/bin/env python3
"""Regenerates the protobuf and gRPC modules of flagshare_client from ../../proto.

    python generate.py           # rewrite src/flagshare_client/_proto
    python generate.py --check   # exit 1 when the committed modules are stale

Needs grpcio-tools at the version pinned in requirements-dev.txt: another version writes
other code, and --check would fail for that reason alone.
"""

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
TARGET = HERE / "src" / "flagshare_client" / "_proto"
PROTO = "flagshare/v1/flagshare.proto"
PACKAGE = "flagshare_client._proto"


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed with status {status}")
    # protoc writes absolute imports (`from flagshare.v1 import ...`); the modules live
    # inside this package, so point them there.
    for path in out.rglob("*.py"):
        text = path.read_text()
        path.write_text(text.replace("from flagshare.v1 import", f"from {PACKAGE}.flagshare.v1 import"))
    for folder in [out, out / "flagshare", out / "flagshare" / "v1"]:
        (folder / "__init__.py").write_text("")


def same_tree(a: pathlib.Path, b: pathlib.Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the committed modules are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        fresh = pathlib.Path(scratch) / "_proto"
        fresh.mkdir()
        generate(fresh)
        if args.check:
            if not same_tree(fresh, TARGET):
                sys.exit(
                    "src/flagshare_client/_proto is stale: run `python clients/python/generate.py` "
                    "with the grpcio-tools of requirements-dev.txt and commit the result"
                )
            print("generated modules are current")
            return
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(fresh, TARGET)
        print(f"wrote {TARGET.relative_to(HERE)}")


if __name__ == "__main__":
    main()
