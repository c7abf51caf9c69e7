"""`robustlab --help` and every `robustlab COMMAND --help`: every option
explained, its default shown, and no torch imported to answer (the timing
itself is benchmarks/cli_help.py's)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from robustlab.app.cli import ATTACK_NAMES, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


PARSER = build_parser()
COMMANDS = _subparsers(PARSER)


def test_the_commands_are_the_documented_ones():
    assert sorted(COMMANDS) == ["attack", "demo", "eval", "list", "report", "study", "train"]


def test_the_attack_help_names_every_registered_attack():
    import robustlab as rl

    assert list(ATTACK_NAMES) == rl.attacks.names()
    assert ", ".join(rl.attacks.names()) in " ".join(COMMANDS["attack"].format_help().split())


@pytest.mark.parametrize("name", ["robustlab", *COMMANDS])
def test_every_option_has_help(name):
    parser = PARSER if name == "robustlab" else COMMANDS[name]
    missing = [a.option_strings or a.dest for a in parser._actions
               if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()]
    assert missing == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_default_is_in_the_help(name):
    parser = COMMANDS[name]
    text = " ".join(parser.format_help().split())  # argparse wraps lines: compare word by word
    for a in parser._actions:
        d = a.default
        if d is None or d is False or d == [] or d == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        help_text = " ".join(a.help.split())
        assert "default" in help_text or f"(default: {d})" in text, (a.option_strings, d)


def test_help_answers_without_importing_torch():
    """`robustlab --help` and every `robustlab COMMAND --help` parse with no
    torch in sys.modules (torch alone takes about a second to import)."""
    commands = [[], *([c] for c in COMMANDS)]
    code = ("import contextlib, io, sys\n"
            "from robustlab.app.cli import main\n"
            f"for argv in {commands!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main([*argv, '--help'])\n"
            "    if 'torch' in sys.modules:\n"
            "        print(' '.join(argv) or 'robustlab'); break\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help of {out.stdout.strip()} imports torch"
