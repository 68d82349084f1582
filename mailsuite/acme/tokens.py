"""The http-01 tokens (RFC 8555 8.3): one file a token, named by it, holding the key
authorization; the ACME client writes them, the HTTP responder (mailsuite.autoconfig) answers
``GET /.well-known/acme-challenge/TOKEN`` from them.

A directory rather than memory: with privilege separation the client runs in the master and
the responder in the network process; the files are the hand-over (as certbot's ``--webroot``).
The directory is beside the TLS files, root's; the files are 0644 (a key authorization is no
secret: the CA fetches it over plain HTTP). Token names are checked (base64url, RFC 8555 8.3:
at least 128 bits) on both sides, so no request can name another file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Any

from twisted.logger import Logger
from twisted.web import server

from mailsuite.fsutil import atomic_write
from mailsuite.threads import Blocking

log = Logger()

PREFIX = "/.well-known/acme-challenge/"
#: base64url without padding; RFC 8555 8.3 asks for 128 bits of entropy (22 characters)
TOKEN = re.compile(r"[A-Za-z0-9_-]{22,128}")
MAX_SIZE = 1024  # a key authorization is token.thumbprint: far less


class TokenStore:
    """The token files of one directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, token: str) -> str:
        if not TOKEN.fullmatch(token):
            raise ValueError(f"not an ACME token: {token!r}")
        return os.path.join(self.directory, token)

    def open_dir(self) -> int:
        """The directory, made 0755 if missing, opened without following a symlink; refused
        unless it is ours and writable by nobody else (no one may swap what we write in it)."""
        os.makedirs(os.path.dirname(self.directory), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o755)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise OSError(errno.EPERM, "not ours, or writable by others", self.directory)
        if st.st_mode & 0o755 != 0o755:  # a umask took o+rx: the HTTP responder must read it
            os.fchmod(fd, 0o755)
        return fd

    def put(self, token: str, key_authorization: str) -> None:
        """Publish ``key_authorization`` for ``token`` (all or nothing; blocking)."""
        name = os.path.basename(self._path(token))
        fd = self.open_dir()
        try:
            atomic_write(name, key_authorization.encode("ascii"), tmp=f"{name}.tmp", dir_fd=fd,
                         mode=0o644, sync=None)
        finally:
            os.close(fd)

    def remove(self, token: str) -> None:
        """Withdraw ``token`` (no error when it is not there; blocking)."""
        name = os.path.basename(self._path(token))
        fd = self.open_dir()
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def read(self, token: str) -> bytes | None:
        """The key authorization of ``token``, None when there is none (blocking)."""
        try:
            path = self._path(token)
        except ValueError:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                log.warn("ACME token {path} unreadable: {why}", path=path, why=e.strerror)
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(MAX_SIZE)


def serve(request: Any, store: TokenStore, blocking: Blocking) -> Any:
    """Answer ``GET /.well-known/acme-challenge/TOKEN`` (the path checked by the caller): the
    key authorization as text/plain, or 404. The file is read in a thread."""
    token = request.path.decode("ascii", "replace")[len(PREFIX):]
    if request.method not in (b"GET", b"HEAD"):
        request.setResponseCode(405)
        return b"GET only\n"
    finished: list[bool] = []
    request.notifyFinish().addBoth(lambda _: finished.append(True))

    def answer(body: bytes | None) -> None:
        if finished:  # the client went away meanwhile
            return
        request.setHeader(b"Content-Type", b"text/plain")
        if body is None:
            request.setResponseCode(404)
            body = b"Not found\n"
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def failed(failure: Any) -> None:
        log.failure("ACME token not served", failure)
        answer(None)

    blocking(store.read, token).addCallbacks(answer, failed)
    return server.NOT_DONE_YET
