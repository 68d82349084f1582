"""A scriptable test milter on libmilter (Debian's python3-milter, the real filter side of the
protocol), run by the system Python as its own process (the venv does not see the package):

    /usr/bin/python3 tests/integration/pymilter_server.py SOCKET MODE

SOCKET is libmilter's (``inet:PORT@127.0.0.1``, ``unix:/path``). MODE says what it does at end
of message: ``modify`` (every header, envelope and body change), ``reject`` (a multi-line 550),
``quarantine``, ``discard``, ``tempfail``, ``slow`` (sleeps 5 s before it answers), ``second``
(rejects a message that lacks the ``modify`` milter's header: a chain sees earlier changes),
``rcpt`` (rejects RCPT to an address starting with ``team``), ``connect`` (rejects every client),
``helo`` (rejects HELO bad.example), ``mail`` (tempfails MAIL from spammer@...). It appends
what it was told (macros, headers) to the file LOG when given as a third argument.
"""

from __future__ import annotations

import sys
import time

import Milter

MODE = sys.argv[2]
LOG = sys.argv[3] if len(sys.argv) > 3 else None


def note(text: str) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(text + "\n")


class TestMilter(Milter.Base):
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        note(f"connect {hostname} j={self.getsymval('j')} _={self.getsymval('_')}")
        if MODE == "connect":
            self.setreply("554", "5.7.1", "you are not welcome")
            return Milter.REJECT
        return Milter.CONTINUE

    def hello(self, name: str) -> int:
        if MODE == "helo" and name == "bad.example":
            self.setreply("550", "5.7.1", "bad HELO")
            return Milter.REJECT
        return Milter.CONTINUE

    def envfrom(self, sender: str, *args: str) -> int:
        note(f"mail {sender} i={self.getsymval('i')}")
        if MODE == "mail" and sender.strip("<>").startswith("spammer"):
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envrcpt(self, rcpt: str, *args: str) -> int:
        note(f"rcpt {rcpt} rcpt_addr={self.getsymval('{rcpt_addr}')}")
        if MODE == "rcpt" and rcpt.strip("<").startswith("team"):
            self.setreply("550", "5.1.1", "no such user here")
            return Milter.REJECT
        return Milter.CONTINUE

    def header(self, name: str, value: str) -> int:
        self.headers.append((name, value))
        return Milter.CONTINUE

    def eom(self) -> int:
        note("headers " + " | ".join(f"{n}: {v}" for n, v in self.headers))
        if MODE == "modify":
            self.addheader("X-Test-Milter", "seen")
            self.chgheader("Subject", 1, "[milter] changed")
            self.chgheader("X-Drop", 1, "")
            self.addheader("X-Top", "first", 0)
            self.chgfrom("<changed@example.test>")
            self.addrcpt("<carol@example.test>")
            self.delrcpt("<boss@example.test>")
            self.replacebody(b"the milter's body\r\n")
        elif MODE == "reject":
            self.setreply("550", "5.7.1", "first line", "second line")
            return Milter.REJECT
        elif MODE == "quarantine":
            self.quarantine("looks odd")
        elif MODE == "discard":
            return Milter.DISCARD
        elif MODE == "tempfail":
            return Milter.TEMPFAIL
        elif MODE == "slow":
            time.sleep(5)
        elif MODE == "second" and not any(n == "X-Test-Milter" for n, _ in self.headers):
            self.setreply("550", "5.7.1", "the first milter's header is missing")
            return Milter.REJECT
        return Milter.ACCEPT


def main() -> None:
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT
                     | Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    Milter.runmilter("mailsuite-test", sys.argv[1], 60)


if __name__ == "__main__":
    main()
