"""A Unix account as the rest of mailsuite sees it: name, uid, gid, home."""

from __future__ import annotations

from dataclasses import dataclass


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
