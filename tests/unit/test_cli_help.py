"""`--help` of every command and subcommand answers, never a traceback (a bare % in one setting's
doc once crashed `tokenpulse serve --help`)."""

from __future__ import annotations

import argparse

import pytest

from tokenpulse import cli


def _commands() -> list[list[str]]:
    """Every command path, walked from the parser main() uses."""
    paths = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        paths.append(prefix)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, prefix + [name])

    walk(cli.build_parser(), [])
    return paths


COMMANDS = _commands()


def test_every_command_is_found():
    assert ["serve"] in COMMANDS and ["alerts", "history"] in COMMANDS and len(COMMANDS) > 15


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "tokenpulse")
def test_help_answers(path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(path + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tokenpulse")
