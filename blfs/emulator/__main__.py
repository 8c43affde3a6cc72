"""`python -m blfs.emulator generate DIR …` and `python -m blfs.emulator serve DIR …`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .generate import Options, generate
from .server import serve, tls_context


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m blfs.emulator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("generate", help="write deterministic sample data into DIR")
    make.add_argument("dir", type=Path)
    make.add_argument("--seed", type=int, default=Options.seed)
    make.add_argument("--subjects", type=int, default=Options.subjects)
    make.add_argument("--objects-per-subject", type=int, default=Options.objects_per_subject)
    make.add_argument("--object-size", type=int, default=Options.object_size, metavar="BYTES")

    run = commands.add_parser("serve", help="serve DIR as brainlife's REST API")
    run.add_argument("dir", type=Path)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=0, help="0 picks a free port")
    run.add_argument("--tls-cert", type=Path)
    run.add_argument("--tls-key", type=Path)
    run.add_argument("--knobs", type=Path, metavar="FILE", help="JSON object of initial knobs")

    args = parser.parse_args(argv)
    if args.command == "generate":
        options = Options(args.seed, args.subjects, args.objects_per_subject, args.object_size)
        generate(args.dir, options)
        return
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    knobs = json.loads(args.knobs.read_text()) if args.knobs else None
    serve(args.dir, args.host, args.port, tls, knobs)


if __name__ == "__main__":
    main()
