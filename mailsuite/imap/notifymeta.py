"""NOTIFY's METADATA events (RFC 5465 5.6 and 5.7, RFC 5464 5): MailboxMetadataChange and
ServerMetadataChange, offered when METADATA is (``[imap] imap_metadata``).

SETMETADATA tells the account's event bus (``metadata.publish_change``: kind ``metadata``,
the mailbox, ``""`` for the server, and the entry names); a session whose NOTIFY asks for the
event gets the unsolicited METADATA response of RFC 5464 4.4.2, entry names only
(``* METADATA INBOX /private/comment``: ``entry-list``, no values, no parentheses), sent as
its other notifications are (at once between commands or in IDLE, else after the running
command's tagged reply). Which session hears what:

- a mailbox's entries: the group whose filter names the mailbox (the first one, RFC 5465 6)
  has MailboxMetadataChange; for the selected mailbox the selected filter's group when there
  is one;
- the server's entries: any group has ServerMetadataChange (the event names no mailbox);
- the session that set them hears nothing (its tagged OK says it), as for MailboxName.

What another process writes to the entries' files is not heard (mailsuite's own sessions
are).
"""

from __future__ import annotations

from typing import Any

from mailsuite.imap.metadata import entry_text
from mailsuite.imap.notifyspec import MAILBOX_METADATA_CHANGE, SERVER_METADATA_CHANGE
from mailsuite.imap.parser import encode_mailbox
from mailsuite.store.events import Event


def _hears(watch: Any, event: Event) -> bool:
    spec = watch.spec
    if not event.name:
        groups = (*spec.others, spec.selected)
        return any(g is not None and SERVER_METADATA_CHANGE in g.events for g in groups)
    if spec.selected is not None and event.name == watch.selected_name():
        group = spec.selected
    else:
        group = spec.group_for(event.name, watch.subscribed)
    return group is not None and MAILBOX_METADATA_CHANGE in group.events


def metadata_line(watch: Any, event: Event) -> bytes | None:
    """The METADATA response ``watch`` (a notify.NotifyWatch) sends for ``event``, or None."""
    if event.source is watch.session or not event.changes or not _hears(watch, event):
        return None
    shown = encode_mailbox(event.name, watch.session.utf8_names) if event.name else b'""'
    return b"METADATA " + shown + b" " + b" ".join(entry_text(n) for n in event.changes)
