"""Postfix's virtual alias table (virtual(5)): ``virtual_alias_maps`` and
``virtual_alias_domains``, several domains on one host.

A table is the text of a Postfix ``hash:`` source file (no postmap: the file itself is read,
and re-read when it changes, mailsuite.tablefile); ``#`` starts a comment line only, as
in Postfix (a ``#`` after a key is a result)::

    # example.net is a virtual alias domain (the value of its line does not matter)
    example.net             anything
    info@example.net        boss
    sales@example.net       boss, carol@example.org
    # every other address of example.net
    @example.net            catchall
    # postmaster@ each domain of mydestination and myorigin
    postmaster              boss

An address is looked up as virtual(5) says: ``user+ext@domain``, ``user@domain``, ``user+ext``,
``user`` (the two bare forms only in mydestination and myorigin), ``@domain``; each key in every
table before the next key. ``@otherdomain`` as the first result is the same user there. A result
without ``@`` is a local name (an alias or account, as in aliases(5)); Postfix appends
``@$myorigin`` (append_at_myorigin), the same where myorigin is one of mydestination's domains,
and mailsuite's myorigin (``$mydomain``) often is not, where the copy would go out to the MX.
The results are looked up again (recursively, ``RECURSION_LIMIT`` deep, ``EXPANSION_LIMIT``
addresses: Postfix's virtual_alias_recursion_limit and virtual_alias_expansion_limit); an
address mapped to itself ends there. The extension is not propagated to the results.

The final addresses are delivered as any: in mydestination by local(8)'s rules (aliases,
~/.forward, the mailbox), others through the queue. In a virtual alias domain only the table's
addresses exist: any other is ``550 5.1.1 ... User unknown in virtual alias table`` at RCPT (the
domain has its own name space: local accounts and aliases are not visible there). The table
applies to the addresses of mydestination and of the virtual alias domains, not to mail relayed
to other domains.

A domain is a virtual alias domain when ``virtual_alias_domains`` names it, or names a table
(by default the virtual_alias_maps) that has it as a key. ``is_domain`` answers from the tables
as last read (the reactor thread asks it at RCPT, and never reads files): a domain added to a
file counts once a look-up has re-read it (the next RCPT to any local address) or after a
restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from mailsuite.filter.bcc import logical_lines, lookup_keys
from mailsuite.tablefile import TableError, TableFile
from mailsuite.mta.accept import UnknownRecipient
from mailsuite.mta.aliases import AliasLookupError
from mailsuite.startup import StartupError, describe_os_error, unreadable_by

Table = dict[str, list[str]]

RECURSION_LIMIT = 1000
EXPANSION_LIMIT = 1000
_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"]+\Z")


class UnknownVirtualRecipient(UnknownRecipient):
    """An address of a virtual alias domain that the table does not have (Postfix's text)."""

    template = ("5.1.1 <{address}>: Recipient address rejected: User unknown in virtual alias"
                " table")


class VirtualLookupError(AliasLookupError):
    """The table cannot expand an address now (too deep, too many): a temporary failure
    (an AliasLookupError, so that LocalDelivery answers it as one, without importing this)."""


def parse_table(text: str, filename: str) -> Table:
    """``pattern address, address...`` per logical line (commas and/or spaces between the
    results); every bad line is a TableError ``file:line: why``; a repeated key too (postmap
    keeps the first and warns; a table that says two things is refused here)."""
    table: Table = {}
    first: dict[str, int] = {}
    errors: list[str] = []
    for number, line in logical_lines(text):
        key, *results = line.replace(",", " ").split()
        key = key.lower()
        where = f"{filename}:{number}"
        bad = [r for r in results if not _ADDRESS.match(r)]
        if not results:
            errors.append(f"{where}: {key!r} has no value (expected: pattern address, ...)")
        elif bad:
            errors.append(f"{where}: {bad[0]!r} is not an address")
        elif key in table:
            errors.append(f"{where}: {key!r} is repeated (first on line {first[key]})")
        else:
            table[key], first[key] = results, number
    if errors:
        raise TableError(errors)
    return table


class VirtualAliases:
    """The virtual alias tables of one configuration (see the module doc). ``expand`` is
    blocking (it may re-read the files: call it in the thread pool); ``is_domain`` is not."""

    def __init__(self, tables: list[TableFile[Table]], domains: Collection[str],
                 domain_tables: list[TableFile[Table]], local_domains: Collection[str],
                 myorigin: str, delimiter: str = "") -> None:
        self.tables = tables
        self.domains = {d.lower().rstrip(".") for d in domains}
        self.domain_tables = domain_tables
        self.local_domains = {d.lower().rstrip(".") for d in local_domains} | {myorigin.lower()}
        self.myorigin = myorigin
        self.delimiter = delimiter
        self._listed: set[str] = set()  # the domain keys of domain_tables, as last read
        self._note_domains([t.current() for t in domain_tables])  # loaded by the caller

    @classmethod
    def from_config(cls, mail: Any, maillog: Any) -> VirtualAliases | None:
        """The tables [mail] names, read now (None: no virtual_alias_maps nor domains); a
        table that cannot be read or parsed refuses the start naming the key and file."""
        if not (mail.virtual_alias_maps or mail.virtual_alias_domains):
            return None

        def warn(text: str) -> None:
            maillog.write_from_any_thread("cleanup", f"warning: {text}")

        files: dict[str, TableFile[Table]] = {}

        def table(key: str, path: str) -> TableFile[Table]:
            if path not in files:
                files[path] = TableFile(path, parse_table, warn)
                try:
                    files[path].load()
                except TableError as e:
                    raise StartupError(f"[mail] {key}: {e}") from None
                except OSError as e:
                    raise StartupError(f"[mail] {key}: {describe_os_error(e)}") from None
            return files[path]

        maps = [table("virtual_alias_maps", p) for p in mail.virtual_alias_maps]
        named = [w for w in mail.virtual_alias_domains if w.startswith("/")]
        return cls(maps, [w for w in mail.virtual_alias_domains if not w.startswith("/")],
                   [table("virtual_alias_domains", p) for p in named],
                   set(mail.mydestination), mail.myorigin, mail.recipient_delimiter)

    @classmethod
    def check_at_start(cls, mail: Any, owner: tuple[int, int]) -> None:
        """In the root master of a privilege-separated server, before the network process
        (which reads the tables, as ``mail_owner``) starts: each table parses, and
        ``mail_owner`` may read it; else a StartupError naming key and file."""
        cls.from_config(mail, None)
        named = [("virtual_alias_maps", p) for p in mail.virtual_alias_maps]
        named += [("virtual_alias_domains", p) for p in mail.virtual_alias_domains
                  if p.startswith("/")]
        where = {path: key for key, path in reversed(named)}
        for path, why in unreadable_by(list(where), *owner).items():
            raise StartupError(f"[mail] {where[path]}: {path}: {why} (read by mail_owner)")

    def _note_domains(self, tables: list[Table]) -> None:
        self._listed = {key for t in tables for key in t if "@" not in key}

    def is_domain(self, domain: str) -> bool:
        """Whether ``domain`` is a virtual alias domain (no file is read)."""
        name = domain.lower().rstrip(".")
        return name in self.domains or name in self._listed

    def expand(self, address: str) -> list[str] | None:
        """(blocking) The final addresses of ``address``; None when the table has no entry
        for it outside a virtual alias domain (it is delivered as it is); raises
        UnknownVirtualRecipient for an address of a virtual alias domain it does not have,
        VirtualLookupError when the expansion is too deep or too big."""
        tables = [t.current() for t in self.tables]
        self._note_domains([t.current() for t in self.domain_tables])
        if self._lookup(tables, address) is None:
            if self.is_domain(address.rpartition("@")[2]):
                raise UnknownVirtualRecipient(address)
            return None
        out: list[str] = []
        self._expand(tables, address, (), out, address)
        return list(dict.fromkeys(out))

    def _expand(self, tables: list[Table], address: str, chain: tuple[str, ...],
                out: list[str], original: str) -> None:
        if len(chain) >= RECURSION_LIMIT:
            raise VirtualLookupError(f"virtual alias nesting deeper than {RECURSION_LIMIT}")
        results = self._lookup(tables, address)
        if results is None:
            if self.is_domain(address.rpartition("@")[2]):
                raise UnknownVirtualRecipient(original)
            out.append(address)
        else:
            for result in results:
                if result.lower() == address.lower() or result.lower() in chain:
                    out.append(result)  # mapped to itself (or back): ends the recursion
                else:
                    self._expand(tables, result, (*chain, address.lower()), out, original)
        if len(out) > EXPANSION_LIMIT:
            raise VirtualLookupError(f"virtual alias expansion over {EXPANSION_LIMIT} addresses")

    def _lookup(self, tables: list[Table], address: str) -> list[str] | None:
        """The results of the first key found, rewritten as Postfix rewrites them."""
        for key in lookup_keys(address, self.local_domains, self.delimiter):
            for table in tables:
                if key in table:
                    return self._rewritten(table[key], address)
        return None

    def _rewritten(self, results: list[str], address: str) -> list[str]:
        out = []
        for n, result in enumerate(results):
            if result.startswith("@") and n == 0:
                result = address.rpartition("@")[0] + result  # @otherdomain: the same user
            out.append(result)
        return out

    def destinations(self, address: str, local: Callable[[str, str], list[Any]],
                     is_local: Callable[[str], bool], remote: Callable[[str], Any]
                     ) -> list[Any] | None:
        """(blocking) The destinations of ``address`` through the table: each final address
        in mydestination by ``local(local_part, address)`` (local(8): aliases, ~/.forward,
        the mailbox), any other ``remote(final)``; None when the table has nothing for it."""
        finals = self.expand(address)
        if finals is None:
            return None
        found: list[Any] = []
        for final in finals:
            there, at, domain = final.rpartition("@")
            if not at:  # a bare name: a local one (Postfix: @$myorigin, see the module doc)
                found += local(final, address)
            elif is_local(domain):
                found += local(there.strip('"'), address)
            else:
                found.append(remote(final))
        return found
