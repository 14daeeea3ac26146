"""The ``fmbff`` command line: thin over the engine. Errors are one line and exit code 2.

One module per command (``segment``, ``info``, ``train``, ``evaluate``, ``propagate``,
``demo``, ``make_data``), each with its ``add_parser`` and its ``cmd_*``; what several share
is in ``_common``. Each imports its engine modules inside the functions that use them, so
``fmbff --help`` starts without them."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import demo, evaluate, info, make_data, propagate, segment, train
from ._common import EXIT_USAGE, _one_line_warning, _version, one_line

#: The sub-commands in the order ``fmbff --help`` lists them, each with the function it runs.
COMMANDS = {"segment": (segment, segment.cmd_segment), "info": (info, info.cmd_info),
            "train": (train, train.cmd_train), "evaluate": (evaluate, evaluate.cmd_evaluate),
            "propagate": (propagate, propagate.cmd_propagate),
            "demo": (demo, demo.cmd_demo), "make-data": (make_data, make_data.cmd_make_data)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmbff", description="FM-BFF-Net lesion segmentation from the command line.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module, _run in COMMANDS.values():
        module.add_parser(sub)
    parser.subcommands = dict(sub.choices)  # for errors in the sub-command's own usage
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a misspelled option: the sub-command's own usage, not the top-level one
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return COMMANDS[args.command][1](args)
        except KeyboardInterrupt:
            print("fmbff: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - every error is one line, never a traceback
            if os.environ.get("FMBFF_DEBUG"):
                raise
            print(f"fmbff {args.command}: error: {one_line(err)}", file=sys.stderr)
            return EXIT_USAGE


__all__ = ["COMMANDS", "build_parser", "main"]
