"""Durability helpers shared by the store, the queue and the maildrop."""

from __future__ import annotations

import os


def fsync_dir(directory: str) -> None:
    """Make a new, renamed or removed entry of ``directory`` durable (fsync of the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
