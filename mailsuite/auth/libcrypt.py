"""The system's libcrypt (libxcrypt), through ctypes: ``crypt_rn`` and ``crypt_gensalt_rn``.

The stdlib ``crypt`` module is gone in Python 3.13, and it called the non-reentrant ``crypt(3)``.
This binding uses the reentrant forms with a buffer per call, so any number of thread-pool
threads may hash at once (ctypes releases the GIL for the duration of the call).

Every hashing method the installed libxcrypt knows works (on Debian 12: yescrypt ``$y$``,
sha512crypt ``$6$``, sha256crypt ``$5$``, bcrypt ``$2b$``, md5crypt ``$1$`` and more).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: ``sizeof(struct crypt_data)`` in libxcrypt: the buffer ``crypt_rn`` works in.
CRYPT_DATA_SIZE = 32768
#: ``CRYPT_GENSALT_OUTPUT_SIZE``: big enough for any setting string ``crypt_gensalt_rn`` makes.
CRYPT_GENSALT_OUTPUT_SIZE = 192
#: ``CRYPT_MAX_PASSPHRASE_SIZE`` counts the terminating NUL: longer phrases are refused.
CRYPT_MAX_PASSPHRASE_SIZE = 512

_LIBRARY_NAMES = ("libcrypt.so.1", "libcrypt.so.2")


class LibcryptUnavailable(RuntimeError):
    """No usable libcrypt (libxcrypt) could be loaded: passwords cannot be checked."""


@functools.cache
def library() -> ctypes.CDLL:
    """Load libcrypt once and declare the two functions we call; raise LibcryptUnavailable."""
    names = list(_LIBRARY_NAMES)
    found = ctypes.util.find_library("crypt")
    if found:
        names.append(found)
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            crypt_rn = lib.crypt_rn
            crypt_gensalt_rn = lib.crypt_gensalt_rn
        except (OSError, AttributeError) as e:
            errors.append(f"{name}: {e}")
            continue
        crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        crypt_rn.restype = ctypes.c_char_p
        crypt_gensalt_rn.argtypes = [
            ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int,
            ctypes.c_char_p, ctypes.c_int,
        ]
        crypt_gensalt_rn.restype = ctypes.c_char_p
        return lib
    raise LibcryptUnavailable(
        "cannot load libcrypt with crypt_rn (install libcrypt1 / libxcrypt): " + "; ".join(errors)
    )


def crypt(phrase: bytes, setting: bytes) -> bytes | None:
    """Hash ``phrase`` as ``setting`` (a full hash or a salt) says; None when libcrypt cannot.

    None covers: a NUL byte in either argument (C would silently truncate there), a phrase
    longer than libcrypt accepts, and a setting of an unknown or disabled method or a malformed
    one (libcrypt returns NULL, or a failure token starting with ``*``). Never raises for bad
    input, so a strange shadow entry cannot crash a login.
    """
    if b"\0" in phrase or b"\0" in setting:
        return None
    data = ctypes.create_string_buffer(CRYPT_DATA_SIZE)  # zero-filled, as crypt_rn requires
    result: bytes | None = library().crypt_rn(phrase, setting, data, CRYPT_DATA_SIZE)
    if not result or result.startswith(b"*"):
        return None
    return result


def gensalt(prefix: bytes, count: int = 0) -> bytes:
    """A fresh setting string for method ``prefix`` (``b"$y$"``, ``b"$6$"``...), random salt.

    ``count`` 0 means the method's default cost. Raises ValueError for a method this libcrypt
    does not offer or a count it rejects.
    """
    output = ctypes.create_string_buffer(CRYPT_GENSALT_OUTPUT_SIZE)
    # rbytes NULL: libxcrypt draws the salt from the operating system's random source.
    result = library().crypt_gensalt_rn(
        prefix, count, None, 0, output, CRYPT_GENSALT_OUTPUT_SIZE
    )
    if not result or result.startswith(b"*"):
        err = ctypes.get_errno()
        reason = os.strerror(err) if err else "unsupported"
        raise ValueError(f"libcrypt cannot make a salt for {prefix!r}: {reason}")
    return bytes(result)
