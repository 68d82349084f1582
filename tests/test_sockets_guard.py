"""The guard that keeps socket-binding tests out of the unit modules (tests/sockets_guard.py)."""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from tests.sockets_guard import UnitTestBoundSocket


class GuardTests(unittest.TestCase):
    def test_bind_in_a_unit_module_is_refused(self) -> None:
        """A bind from a unit module, directly or through the code it calls (the reactor's
        listenTCP here), raises before the socket is bound, naming the module."""
        with socket.socket() as s:
            e = self.assertRaises(UnitTestBoundSocket, s.bind, ("127.0.0.1", 0))
            self.assertEqual(s.getsockname(), ("0.0.0.0", 0))
        self.assertIn(f"tests{os.sep}test_sockets_guard.py binds a socket", str(e))
        self.assertRaises(UnitTestBoundSocket, reactor.listenTCP, 0, Factory(),
                          interface="127.0.0.1")
