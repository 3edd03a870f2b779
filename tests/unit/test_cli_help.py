"""Issue 23 item 5: --version, a help text for every positional and option, every subcommand in the top-level help
(plain text, no reST markup)."""
import argparse
import importlib
import subprocess
import sys

import nnunet_ssl

cli = importlib.import_module("nnunet_ssl.cli.main")
COMMANDS = ("doctor", "ingest", "finetune", "prepare-reference", "workflow", "demo", "export")


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_version():
    out = subprocess.run([sys.executable, "-m", "nnunet_ssl.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"nnunet_ssl {nnunet_ssl.__version__}"
    from importlib.metadata import version
    assert version("nnunet_ssl") == nnunet_ssl.__version__  # setup.py and the package agree


def test_top_level_help_lists_every_command_without_rest_markup():
    text = cli.build_parser().format_help()
    for command in COMMANDS:
        assert f"    {command}" in text, command
    assert "``" not in text and ":func:" not in text


def test_every_argument_has_help():
    missing = []
    for name, sub in _subparsers(cli.build_parser()).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
