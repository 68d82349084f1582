"""``mailsuite``: the administrator's command, one entry point with sub-commands::

    mailsuite dkim keygen example.com       (mailsuite.dkimcmd)
    mailsuite SUBCOMMAND --help

A sub-command is one line of ``COMMANDS``: its name, a line of help, and its ``main(argv,
out)`` returning a sysexits(3) status; errors are ``mailsuite: fatal: ...`` on stderr
(mailsuite.cmdbase.run), as the other commands'.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from mailsuite import configcmd, dkimcmd, doctor, queueadmin
from mailsuite.cmdbase import CONFIG_HELP, EX_OK, EX_USAGE, Fatal, run

#: name -> (what it does, main(argv, out) -> exit status)
COMMANDS: dict[str, tuple[str, Callable[[list[str], TextIO], int]]] = {
    "dkim": ("DKIM signing keys: keygen", dkimcmd.main),
    "doctor": ("check DNS, ports, certificate, files and relay; the fixes", doctor.main),
    "config": ("the effective settings of mail.ini, as postconf [-n|-d] [KEY...]", configcmd.main),
    "queue": ("the mail queue: list, flush, hold, release, requeue, delete, show", queueadmin.main),
}


def usage() -> str:
    lines = [f"  {name:<10} {text}" for name, (text, _) in COMMANDS.items()]
    return ("usage: mailsuite SUBCOMMAND [options]   (mailsuite SUBCOMMAND --help)\n"
            "The mail system's administration. Sub-commands:\n" + "\n".join(lines)
            + "\nOptions every sub-command takes:\n" + CONFIG_HELP.rstrip("\n"))


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stream = sys.stdout if out is None else out

    def dispatch() -> int:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(usage(), file=stream)
            return EX_OK if argv else EX_USAGE
        if argv[0] not in COMMANDS:
            raise Fatal(EX_USAGE, f"unknown sub-command {argv[0]!r}\n{usage()}")
        return COMMANDS[argv[0]][1](argv[1:], stream)

    return run("mailsuite", dispatch, usage())


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
