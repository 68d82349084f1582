"""What every local command (``sendmail``, ``mailq``, ``newaliases``, ``mailsuite-queue``)
shares: sysexits(3) codes, the errors that end a command, reading mail.ini, and the wrapper
that turns them into an exit status (the message to stderr, ``--help`` to stdout)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Any, TextIO

from mailsuite.config import ConfigError, config_path, load_config

EX_OK, EX_USAGE, EX_DATAERR, EX_SOFTWARE = 0, 64, 65, 70
EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 75, 77, 78

#: The ``--config`` line of every usage text.
CONFIG_HELP = ("  -C PATH, --config PATH  mail.ini (else $MAILSUITE_CONFIG, else"
               " /etc/mailsuite/mail.ini)\n")


class Fatal(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class Help(Exception):
    """``--help``: the program's usage goes to stdout, exit 0."""


def load(path: str | None) -> Any:
    """mail.ini from ``path``, $MAILSUITE_CONFIG or the default; Fatal(EX_CONFIG) if refused."""
    try:
        return load_config(config_path(path))
    except ConfigError as e:
        raise Fatal(EX_CONFIG, f"configuration refused:\n{e}") from e


def run(program: str, main: Callable[[], int], usage: str) -> int:
    """``main()``'s exit status; a Fatal is ``program: fatal: ...`` on stderr and its code."""
    try:
        return main()
    except Fatal as e:
        print(f"{program}: fatal: {e}", file=sys.stderr)
        return e.code
    except Help:
        print(usage)
        return EX_OK
    except BrokenPipeError:
        return EX_OK


def config_only(program: str, argv: list[str] | None) -> str | None:
    """The ``-C``/``--config`` path of a command that takes no other option."""
    argv = sys.argv[1:] if argv is None else argv
    path = None
    i = 0
    while i < len(argv):
        if argv[i] in ("-C", "--config") and i + 1 < len(argv):
            path = argv[i + 1]
            i += 2
        elif argv[i].startswith("-C") and len(argv[i]) > 2:
            path = argv[i][2:]
            i += 1
        elif argv[i] in ("-h", "--help"):
            raise Help()
        else:
            raise Fatal(EX_USAGE, f"usage: {program} [-C|--config mail.ini]")
    return path


# -- the sub-commands of ``mailsuite`` parse with argparse ---------------------------------


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are sysexits' EX_USAGE, as the other commands'."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise Fatal(EX_USAGE, f"{message}\n{self.format_usage().rstrip()}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise _Exit(status)  # after --help: the status, not sys.exit


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def parse_args(parser: argparse.ArgumentParser, argv: list[str], out: TextIO
               ) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status once ``--help`` went to ``out``."""
    try:
        with contextlib.redirect_stdout(out):
            return parser.parse_args(argv)
    except _Exit as e:
        return e.status
