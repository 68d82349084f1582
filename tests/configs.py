"""A real ``Config`` for unit tests, instead of a partial fake of the parts a module reads."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mailsuite.config import Config, parse_config


def real_config(hostname: str = "mail.example.com", **sections: dict[str, Any]) -> Config:
    """The configuration of an empty mail.ini on host ``hostname`` (every default), with the
    keys given per section replaced: ``real_config(mail={"message_size_limit": 100},
    tls={"ssl": "no"})``. Values are as parsed (lists, networks, numbers), not text."""
    base = parse_config("", "mail.ini", hostname=lambda: hostname)
    return replace(
        base, **{name: replace(getattr(base, name), **keys) for name, keys in sections.items()}
    )
