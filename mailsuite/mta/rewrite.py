"""Postfix's address habits for recipients: ``recipient_delimiter`` (address extensions,
``boss+news@`` is boss's) and the config value that names it.

``recipient_delimiter`` is a set of characters (Postfix 2.11's: ``+``, or ``+-`` for either);
the local part splits at the first of them: ``boss+news`` is user ``boss``, extension ``news``.
local(8) looks a name up with its extension first (an alias ``boss+news``, or an account of that
very name), then without (mailsuite.mta.forward.Expander.expand); the mailbox copy keeps the
whole address in ``Delivered-To:`` (mailsuite.mta.delivery.LocalDelivery.final_address).
"""

from __future__ import annotations


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
