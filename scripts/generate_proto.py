"""Regenerate the committed Python stubs from proto/: `python scripts/generate_proto.py`.

With `--out DIR` the stubs are written there instead, which the freshness test uses to
compare them with the committed ones.
"""

import argparse
import pathlib
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent.parent / "proto"


def generate(out: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("fedstream/v1/*.proto"))
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *sources]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=PROTO_ROOT)
    generate(parser.parse_args().out)
