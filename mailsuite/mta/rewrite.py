"""Postfix's address habits for recipients: ``recipient_delimiter`` (address extensions,
``boss+news@`` is boss's) and the config values of it and of ``virtual_alias_domains``
(the virtual alias table itself is mailsuite.mta.virtual's).

``recipient_delimiter`` is a set of characters (Postfix 2.11's: ``+``, or ``+-`` for either);
the local part splits at the first of them: ``boss+news`` is user ``boss``, extension ``news``.
local(8) looks a name up with its extension first (an alias ``boss+news``, or an account of that
very name), then without (mailsuite.mta.forward.Expander.expand); the mailbox copy keeps the
whole address in ``Delivered-To:`` (mailsuite.mta.delivery.LocalDelivery.final_address).
"""

from __future__ import annotations

from mailsuite.configvalues import parse_alias_maps, parse_domain


def parse_recipient_delimiter(value: str) -> str:
    """``recipient_delimiter``: empty (off) or the characters that start an extension."""
    text = value.strip()
    bad = sorted({c for c in text if c.isspace() or c.isalnum() or c in '@."\\<>,;:()[]'})
    if bad:
        raise ValueError(f"{text!r}: a delimiter cannot be {' '.join(map(repr, bad))}"
                         " (usual: + or -)")
    return text


def split_extension(local: str, delimiters: str) -> tuple[str, str | None]:
    """(user, extension) of a local part: ``boss+news`` -> ("boss", "news"); no delimiter in
    it, or one that starts it (``+news``): (local, None)."""
    if not delimiters:
        return local, None
    at = next((i for i, c in enumerate(local) if c in delimiters), -1)
    if at <= 0:
        return local, None
    return local[:at], local[at + 1:]


def parse_virtual_alias_domains(value: str) -> list[str]:
    """``virtual_alias_domains``: domain names and table files (a path, or ``hash:/path``:
    the domains are the keys of its ``example.com  anything`` lines, Postfix's default
    ``$virtual_alias_maps``); files as absolute paths, domains in lower case."""
    out = []
    for word in value.replace(",", " ").split():
        out += parse_alias_maps(word) if "/" in word else [parse_domain(word)]
    return list(dict.fromkeys(out))
