#!/usr/bin/env python3
"""Regenerates faas_client/_proto from proto/faas/v1/api.proto.

    python3 clients/python/scripts/gen_proto.py           # write the files
    python3 clients/python/scripts/gen_proto.py --check   # exit 1 if they are stale

Needs protoc (with its Python and .pyi generators, protobuf >= 3.20) and
grpc_python_plugin: on Debian 12, protobuf-compiler and
protobuf-compiler-grpc (deploy/lib/install-deps.sh installs them). The
generated modules need protobuf >= 4.21 and grpcio at run time.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "faas_client" / "_proto"
PROTO_ROOT = HERE.parents[2] / "proto"
PROTO = "faas/v1/api.proto"
FILES = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate(out: pathlib.Path) -> None:
    plugin = shutil.which("grpc_python_plugin")
    if plugin is None:
        sys.exit("grpc_python_plugin not found (Debian: apt-get install protobuf-compiler-grpc)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                f"--plugin=protoc-gen-grpc_python={plugin}",
                PROTO,
            ],
            check=True,
        )
        generated = pathlib.Path(tmp) / "faas" / "v1"
        for name in FILES:
            text = (generated / name).read_text()
            # The stubs import their messages as a top-level package
            # (faas.v1); inside faas_client they sit beside them.
            text = re.sub(
                r"^from faas\.v1 import api_pb2 as (\w+)$",
                r"from . import api_pb2 as \1",
                text,
                flags=re.M,
            )
            (out / name).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    if not args.check:
        generate(PACKAGE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        stale = [
            name
            for name in FILES
            if not (PACKAGE / name).exists()
            or (PACKAGE / name).read_text() != (pathlib.Path(tmp) / name).read_text()
        ]
    if stale:
        print(
            f"stale generated code in {PACKAGE}: {', '.join(stale)}; "
            "run clients/python/scripts/gen_proto.py",
            file=sys.stderr,
        )
        return 1
    print("generated code is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
