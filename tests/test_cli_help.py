"""`fmbff --help` and every sub-command's --help stay as users know them: each command is
listed at the top, each keeps its arguments in the same order. Cheap: the parser only, no
model is loaded."""

import os
import re
import subprocess
import sys

import pytest

from napari_fmbff.cli import build_parser

#: The commands in the order `fmbff --help` lists them.
COMMANDS = ("segment", "info", "train", "evaluate", "propagate", "demo", "make-data")

#: Each command's arguments as its --help shows them (positionals, options, then each group),
#: by their first option string or metavar. A change here is a change users see.
ARGUMENTS = {
    "segment": (
        "INPUT", "-h", "--model", "--out", "--tile-size", "--overlap", "--batch-size", "--device",
        "--precision", "--blend", "--no-pinned", "--threshold", "--min-size", "--fill-holes",
        "--labels", "--probabilities", "--tta", "--compile", "--overwrite", "--window",
        "--normalize", "--per-slice-labels", "--zarr", "--resume", "--chunk", "--workers",
        "--scheduler", "--box", "--point", "--box-engine"),
    "info": ("-h", "--model", "--size", "--list", "--encoder"),
    "train": (
        "data", "-h", "--out", "--init", "--config", "--encoder", "--encoder-init",
        "--encoder-weights", "--epochs", "--batch-size", "--lr", "--tile-size", "--val-fraction",
        "--patience", "--steps-per-epoch", "--freeze-encoder", "--resize", "--no-augment",
        "--prompts", "--no-prompt-fraction", "--roi", "--device", "--seed", "--resume",
        "--overwrite", "--half", "--workers", "--time-limit", "--no-fmcab", "--no-vitm",
        "--no-biffm", "--no-aggregate-skips", "--window", "--normalize"),
    "evaluate": ("data", "-h", "--model", "--csv", "--overwrite", "--threshold", "--tile-size",
                 "--roi", "--device", "--window", "--normalize"),
    "propagate": ("VOLUME", "-h", "--labels", "--out", "--model", "--slices", "--epochs",
                  "--threshold", "--all-objects", "--no-redraw", "--no-ends", "--encoder",
                  "--device",
                  "--window", "--normalize", "--store", "--overwrite"),
    "demo": ("-h", "--look", "--model", "--headless", "--out", "--device", "--screenshot",
             "--overwrite"),
    "make-data": ("-h", "--look", "-n", "--size", "--seed", "--out", "--workers"),
}


def test_top_level_help_lists_every_command_in_order():
    proc = subprocess.run([sys.executable, "-m", "napari_fmbff.cli", "--help"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^    (\S+)\s", proc.stdout, flags=re.M)
    assert tuple(listed) == COMMANDS, proc.stdout
    assert tuple(build_parser().subcommands) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_keeps_its_arguments_in_order(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    sub = build_parser().subcommands[command]
    built = tuple((action.option_strings or [action.metavar or action.dest])[0]
                  for group in sub._action_groups for action in group._group_actions)
    assert built == ARGUMENTS[command]
    text, at = sub.format_help(), 0
    for name in ARGUMENTS[command]:  # the help shows each, in this order, at a line's start
        found = re.compile(rf"^  {re.escape(name)}(?![\w-])", flags=re.M).search(text, at)
        assert found, f"fmbff {command} --help: {name} missing or out of order:\n{text}"
        at = found.end()
