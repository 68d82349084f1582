"""Postfix's BCC maps: ``always_bcc``, ``sender_bcc_maps``, ``recipient_bcc_maps``.

A stage of the accept pipeline (mailsuite.mta.transaction) that adds blind copies as new
envelope recipients, as Postfix's cleanup does for mail entering from outside the mail system
(our own bounces and notices are not copied): the one address that the sender's look-up gives,
the one of each recipient's look-up, and ``always_bcc``. A copy is added with NOTIFY=NEVER
(Postfix: NOTIFY=NONE, the sender is told nothing about it), only if the address is not a
recipient already, and it is not itself looked up again (``Recipient.bcc``).

The maps are text files in the syntax of Postfix's hash: source files (``key value``, a line
that starts with white space continues the one before, ``#`` comments), named as in Postfix
(``hash:/etc/mailsuite/sender_bcc``: the text file itself is read, there is no postmap). An
address is looked up as Postfix's address tables are (canonical(5), "TABLE SEARCH ORDER"):
``user+ext@domain``, ``user@domain``, ``user+ext``, ``user`` (the two bare forms only for
our own domains: mydestination and myorigin), ``@domain``; case is folded as Postfix's hash
tables fold it; the ``+ext`` forms are those of ``recipient_delimiter`` (none when it is
empty, Postfix's default). The files are re-read when they change (tablefile).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

from twisted.internet import defer

from mailsuite.tablefile import TableError, TableFile
from mailsuite.mta import address as addr
from mailsuite.mta.transaction import Decision, Message, Recipient

Table = dict[str, str]

_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"@]+(@[^\s<>()\[\],;:\"@]+)?\Z")


def parse_map(text: str, filename: str) -> Table:
    """A hash-style source file: ``key value`` per logical line. Every bad line is reported
    (TableError, ``file:line: why``): no value, more than one address (Postfix's BCC maps
    take one), a repeated key (postmap keeps the first; here the table is refused)."""
    table: Table = {}
    first_line: dict[str, int] = {}
    errors: list[str] = []
    for number, line in logical_lines(text):
        key, _, value = line.partition(" ") if " " in line else line.partition("\t")
        key, value = key.strip().lower(), value.strip()
        where = f"{filename}:{number}"
        if not value:
            errors.append(f"{where}: {key!r} has no value (expected: key address)")
        elif not _ADDRESS.match(value.removeprefix("<").removesuffix(">")):
            errors.append(f"{where}: {value!r} is not one address (a BCC map gives one)")
        elif key in table:
            errors.append(f"{where}: {key!r} is repeated (first on line {first_line[key]})")
        else:
            table[key] = value.removeprefix("<").removesuffix(">")
            first_line[key] = number
    if errors:
        raise TableError(errors)
    return table


def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, text) of each entry: comments and blank lines dropped, a line
    starting with white space joined to the entry before (Postfix's table syntax)."""
    entry: list[Any] = []
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t" and entry:
            entry[1] += " " + stripped
            continue
        if entry:
            yield entry[0], entry[1]
        entry = [number, stripped]
    if entry:
        yield entry[0], entry[1]


def lookup_keys(address: str, local_domains: Collection[str], delimiter: str = "") -> list[str]:
    """The keys an address is looked up under, in Postfix's order (see the module doc)."""
    local, at, domain = address.lower().rpartition("@")
    if not at:
        local, domain = domain, ""
    base = re.split(f"[{re.escape(delimiter)}]", local, maxsplit=1)[0] if delimiter else local
    bare = [local, base] if domain in local_domains or not domain else []
    keys = [f"{local}@{domain}", f"{base}@{domain}"] if domain else []
    keys += bare
    if domain:
        keys.append(f"@{domain}")
    return list(dict.fromkeys(keys))


def find(tables: Iterable[Table], address: str, local_domains: Collection[str],
         delimiter: str = "") -> str | None:
    """The BCC address of ``address``: the first table, in order, that has one of its keys."""
    keys = lookup_keys(address, local_domains, delimiter)
    for table in tables:
        for key in keys:
            if key in table:
                return table[key]
    return None


def add_copy(message: Message, address: str) -> bool:
    """Add ``address`` as a blind copy (NOTIFY=NEVER, not looked up again), unless it is a
    recipient already; whether it was added."""
    wanted = address.lower()
    if any(r.address.lower() == wanted for r in message.envelope.recipients):
        return False
    message.envelope.recipients.append(
        Recipient(address, addr.RcptParams(notify=("NEVER",)), bcc=True))
    return True


class BccStage:
    """The pipeline stage (see the module doc). ``blocking`` runs the table files' checks for
    a change (a stat per file and message, a read after a change) off the reactor thread."""

    runs_when_held = True  # a held message keeps its BCC copies, as in Postfix

    def __init__(self, always_bcc: str, sender_maps: list[TableFile[Table]],
                 recipient_maps: list[TableFile[Table]], local_domains: Collection[str],
                 blocking: Any, delimiter: str = "") -> None:
        self.always_bcc = always_bcc
        self.delimiter = delimiter  # recipient_delimiter
        self.sender_maps = sender_maps
        self.recipient_maps = recipient_maps
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.blocking = blocking

    @classmethod
    def from_config(cls, mail: Any, maillog: Any, blocking: Any) -> BccStage | None:
        """The stage [mail] asks for (None: no BCC keys set); reads the maps now (a broken
        map: TableError, OSError)."""
        if not (mail.always_bcc or mail.sender_bcc_maps or mail.recipient_bcc_maps):
            return None

        def warn(text: str) -> None:
            maillog.write_from_any_thread("cleanup", f"warning: {text}")

        def tables(paths: list[str]) -> list[TableFile[Table]]:
            out = [TableFile(p, parse_map, warn) for p in paths]
            for table in out:
                table.load()
            return out

        local = set(mail.mydestination) | {mail.myorigin}
        return cls(mail.always_bcc, tables(mail.sender_bcc_maps),
                   tables(mail.recipient_bcc_maps), local, blocking, mail.recipient_delimiter)

    def __call__(self, message: Message) -> defer.Deferred[Decision | None] | None:
        if not (self.sender_maps or self.recipient_maps):
            self.apply(message, [], [])
            return None
        d = self.blocking(self._tables)
        return d.addCallback(lambda t: self.apply(message, *t))

    def _tables(self) -> tuple[list[Table], list[Table]]:
        """(in the thread pool) The maps as they are now."""
        return ([t.current() for t in self.sender_maps],
                [t.current() for t in self.recipient_maps])

    def apply(self, message: Message, senders: list[Table],
              recipients: list[Table]) -> Decision | None:
        """Add the copies the maps give for ``message`` (the reactor thread)."""
        env = message.envelope
        copies = []
        if env.sender and senders:
            copies.append(find(senders, env.sender, self.local_domains, self.delimiter))
        if recipients:
            copies += [find(recipients, r.address, self.local_domains, self.delimiter)
                       for r in env.recipients if not r.bcc]
        copies.append(self.always_bcc)
        for address in copies:
            if address:
                add_copy(message, address)
        return None

