"""A Unix account as the rest of mailsuite sees it: name, uid, gid, home."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Account:
    """One login: the passwd entry of a user who may receive and read mail.

    ``name`` is the login name (``boss``); ``home`` the passwd home directory, which
    ``mail_location``'s ``~`` expands to.
    """

    name: str
    uid: int
    gid: int
    home: str


class AccountLookup(Protocol):
    """An account database (``auth.checker.AccountDB``, ``auth.pam.NssAccounts``) as the realm
    uses it: ``lookup`` blocks (it reads passwd or asks NSS), so it runs in a thread."""

    def lookup(self, name: str) -> Account | None: ...
