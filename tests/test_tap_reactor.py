"""makeService(options, reactor): the whole server assembled on the reactor it is given."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import twisted.internet
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from mailsuite import tap
from mailsuite.store.cleanup import clean_spool
from mailsuite.threads import InPool
from tests.test_tap import write_config

LISTEN = ("smtp = 2525\nsubmission = 2587\nsmtps = 2465\npop3 = 2110\npop3s = 2995\n"
          "imap = 2143\nimaps = 2993\nlmtp = {d}/lmtp.sock\nautoconfig = 2080\n"
          "autoconfigs = 2443\n")
TLS = "ssl = yes\nssl_cert = {d}/tls/cert.pem\nssl_key = {d}/tls/key.pem\n"


class Untouchable:
    """Stands in for the global reactor: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the global reactor was used: reactor.{name}")


@contextmanager
def untouchable_global_reactor() -> Iterator[None]:
    """Inside, ``from twisted.internet import reactor`` gives an Untouchable (trial's own
    reactor is back before anything can yield to it)."""
    poison = Untouchable()
    saved = sys.modules["twisted.internet.reactor"], twisted.internet.reactor
    sys.modules["twisted.internet.reactor"] = poison  # type: ignore[assignment]
    twisted.internet.reactor = poison  # type: ignore[attr-defined]
    try:
        yield
    finally:
        sys.modules["twisted.internet.reactor"], twisted.internet.reactor = saved


class FakePool:
    """The injected reactor's thread pool: records the work handed to it."""

    def __init__(self) -> None:
        self.work: list[Any] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        self.work.append((f, args))


class TestReactor(MemoryReactorClock):
    """MemoryReactorClock with the IReactorThreads / IReactorFromThreads parts tap.py uses,
    and the UDP ports DNS queries ask for (recorded; no datagram is sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[Any] = []
        self.pool = FakePool()
        self.pool_size: int | None = None
        self.from_thread: list[Any] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> Any:
        self.udp.append(protocol)
        return object()

    def suggestThreadPoolSize(self, size: int) -> None:
        self.pool_size = size

    def getThreadPool(self) -> FakePool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        self.from_thread.append((f, args))


class InjectedReactorTests(unittest.TestCase):
    def setUp(self) -> None:
        path = write_config(self, LISTEN, tls=TLS)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("{d}", os.path.dirname(path)))
        self.options = tap.Options()
        self.options.parseOptions(["--config", path])  # makes the certificate (not a build step)
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        self.reactor = TestReactor()

    def make_service(self) -> Any:
        """makeService on the test reactor, with the global reactor untouchable meanwhile."""
        with untouchable_global_reactor():
            top = tap.makeService(self.options, reactor=self.reactor)
        self.addCleanup(os.close, top.instance_lock.fd)
        self.addCleanup(top.maillog.close)
        return top

    def test_listeners_on_the_injected_reactor(self) -> None:
        """Every TCP listener, the LMTP and control sockets are bound through the reactor
        given to makeService (before twistd sheds privileges), none through the global one."""
        top = self.make_service()
        tcp = sorted((port, interface) for port, _, _, interface in self.reactor.tcpServers)
        self.assertEqual(tcp, [(port, "127.0.0.1") for port in
                               (2080, 2110, 2143, 2443, 2465, 2525, 2587, 2993, 2995)])
        queue = self.options["cfg"].mail.queue_directory
        unix = sorted(address for address, *_ in self.reactor.unixServers)
        self.assertEqual(unix, sorted([os.path.join(os.path.dirname(queue), "lmtp.sock"),
                                       os.path.join(queue, "public", "control")]))
        self.assertTrue(top.listening)
        self.assertEqual(self.reactor.pool_size, 16)
        self.assertEqual(len(self.reactor.whenRunningHooks), 1)  # the pid after the fork

    def test_parts_get_the_injected_reactor(self) -> None:
        """Timers, clocks and the thread helper of the assembled parts are the injected
        reactor's: the pickup timer, the protocol factories, the queue, the thread pool."""
        top = self.make_service()
        self.assertIs(top.getServiceNamed("pickup").clock, self.reactor)
        queue = top.getServiceNamed("qmgr").queue
        self.assertIs(queue.clock, self.reactor)
        self.assertIsInstance(queue.blocking, InPool)
        self.assertIs(queue.blocking.reactor, self.reactor)
        factories = {s.name.split("@")[0]: s.factory for s in top if "@" in s.name}
        for name in ("smtp", "submission", "pop3", "imap"):
            self.assertIs(factories[name].clock, self.reactor, name)
        self.assertIs(factories["smtp"].policy.clock, self.reactor)

    def test_sessions_use_the_injected_reactor(self) -> None:
        """A session built by a listener's factory times out on the injected reactor and
        asks for the client's name through it (a DNS query over UDP, twisted.names), taking no
        thread of the pool."""
        self.make_service()
        factory = next(f for port, f, _, _ in self.reactor.tcpServers if port == 2525)
        proto = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        with untouchable_global_reactor():
            proto.makeConnection(StringTransport(
                peerAddress=IPv4Address("TCP", "192.0.2.7", 40000)))
        self.assertTrue(self.reactor.getDelayedCalls())  # the command deadline
        self.assertTrue(self.reactor.udp)  # the PTR query's socket
        self.assertEqual(self.reactor.pool.work, [])
        proto.connectionLost(None)

    def test_spool_clean_up_in_the_injected_pool(self) -> None:
        """On start, the store service hands the clean-up of what a killed server left in the
        spool (store.cleanup) to the injected reactor's pool, not the global one."""
        top = self.make_service()
        store = top.getServiceNamed("store")
        with untouchable_global_reactor():
            store.startService()
        self.assertEqual([f for f, _ in self.reactor.pool.work], [clean_spool])
        self.assertEqual(self.reactor.pool.work[0][1], (store.spool,))
