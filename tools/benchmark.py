"""Benchmarks: ``python tools/benchmark.py SUBCOMMAND [--json]``.

Subcommands: model, targets, data, decode, train, export, scale.

With ``--json`` one JSON list of ``{"name", "value", "unit"}`` records is printed; otherwise a
table under a line naming the machine. ``python tools/benchmark.py SUBCOMMAND --help`` lists the
subcommand's own options. Results go into ``docs/benchmarks.md`` with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Optional

from benchmarks.timing import machine_line

SUBCOMMANDS = {
    "model": "parameters, multiply-adds and forward time of a model",
    "targets": "target generation: numpy per sample and batched torch",
    "data": "training samples per second of the data pipeline, one process",
    "decode": "decoding with flip test, network excluded",
    "train": "images per second of full training steps",
    "export": "ONNX export: onnxruntime against torch, with and without the decoder",
    "scale": "COCO-scale annotations: start-up, memory per rank, data-worker growth",
}


def load_subcommand(command: str) -> ModuleType:
    """The module behind ``command``, imported only when it is used (``--help`` stays quick)."""
    if command == "model":
        from benchmarks import model as module
    elif command == "targets":
        from benchmarks import targets as module
    elif command == "data":
        from benchmarks import data as module
    elif command == "decode":
        from benchmarks import decode as module
    elif command == "train":
        from benchmarks import train as module
    elif command == "export":
        from benchmarks import export as module
    elif command == "scale":
        from benchmarks import scale as module
    else:
        raise ValueError(f"unknown benchmark {command!r}; one of {', '.join(SUBCOMMANDS)}")
    return module


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line; ``command``'s own options (and its module) are added when it is given."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, summary in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=raw)
        p.add_argument("--json", action="store_true", help="print one JSON list of records")
        if name == command:
            module = load_subcommand(name)
            p.description = module.__doc__
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the subcommand is the first word: the top level has no option that takes a value
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    records = args.run(args)
    if args.json:
        print(json.dumps(records))
    else:
        print(machine_line())
        for r in records:
            print(f"{r['name']:<60} {r['value']:>14} {r['unit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
