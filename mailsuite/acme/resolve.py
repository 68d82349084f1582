"""The ACME client's name look-ups through the configured resolver (``[mail] dns_resolver``).

``requests`` (under certbot's ``acme``) would ask ``getaddrinfo``, which knows nothing of
``dns_resolver``; ``ResolvingAdapter`` makes its HTTPS connections to the addresses that a
``lookup(host) -> [address, ...]`` gives, while TLS still checks the certificate against the
host name of the URL. ``reactor_lookup`` is that look-up for a worker thread: it asks
mailsuite.mta.dns.MXResolver on the reactor and waits for the answer (bounded by the
resolver's own timeouts). urllib3 has no hook for this, hence the small connection subclass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from requests.adapters import HTTPAdapter
from twisted.internet import threads
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util import connection

Lookup = Callable[[str], list[str]]


class _Connection(HTTPSConnection):
    lookup: Lookup

    def _new_conn(self) -> Any:
        """Connect to the first address of ``lookup`` that answers (``lookup`` is given an
        IP address literal too, and answers it as it is)."""
        try:
            addresses = self.lookup(self._dns_host)
        except Exception as e:
            raise NewConnectionError(self, f"cannot resolve {self.host}: {e}") from e
        last: Exception | None = None
        for address in addresses:
            try:
                return connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except OSError as e:
                last = e
        raise NewConnectionError(self, f"cannot connect to {self.host}"
                                       f" ({', '.join(addresses) or 'no address'}): {last}")


class ResolvingAdapter(HTTPAdapter):
    """An HTTPS adapter whose connections find their addresses through ``lookup``."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup  # before HTTPAdapter.__init__, which makes the pool manager
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        conn = type("ResolvingConnection", (_Connection,), {"lookup": staticmethod(self.lookup)})
        pool = type("ResolvingPool", (HTTPSConnectionPool,), {"ConnectionCls": conn})
        self.poolmanager.pool_classes_by_scheme = {  # type: ignore[attr-defined]
            **self.poolmanager.pool_classes_by_scheme, "https": pool}


def reactor_lookup(reactor: Any, dns_resolver: str) -> Lookup:
    """A lookup for worker threads: MXResolver.addresses (A then AAAA) run on ``reactor``."""
    from mailsuite.mta.dns import MXResolver
    names = MXResolver(dns_resolver, reactor=reactor)

    def lookup(host: str) -> list[str]:
        found: list[str] = threads.blockingCallFromThread(reactor, names.addresses, host)
        return found

    return lookup
