"""mailsuite.wire: the one definition of a message's wire form and its size."""

from __future__ import annotations

import random

from twisted.trial import unittest

from mailsuite.wire import complete, crlf, crlf_size, to_wire, wire_size

ALPHABET = [b"\r", b"\n", b"\r\n", b"\0", b"a", b".", b" ", b"\x80", b"\xff"]


def reference(stored: bytes) -> bytes:
    """The wire form spelled out byte by byte (independent of the implementation)."""
    out = bytearray()
    for i, byte in enumerate(stored):
        if byte == 0x0A and (i == 0 or stored[i - 1] != 0x0D):
            out += b"\r\n"
        else:
            out.append(0x80 if byte == 0 else byte)
    if out and out[-1] != 0x0A:
        out += b"\n" if out[-1] == 0x0D else b"\r\n"
    return bytes(out)


class WireFormTests(unittest.TestCase):
    def test_examples(self):
        """Bare LF -> CRLF, CRLF kept (never \\r\\r\\n), final CRLF added (a lone final CR
        completed to CRLF), NUL -> 0x80, the empty message stays empty."""
        cases = {
            b"": b"",
            b"a\n": b"a\r\n",
            b"a": b"a\r\n",
            b"a\r": b"a\r\n",
            b"a\r\nb\n": b"a\r\nb\r\n",
            b"a\0b\n": b"a\x80b\r\n",
            b"\0": b"\x80\r\n",
            b"a\r\r\nb": b"a\r\r\nb\r\n",
            b"\n\n.\n": b"\r\n\r\n.\r\n",
        }
        for stored, wire in cases.items():
            self.assertEqual(to_wire(stored), wire, stored)

    def test_random_sizes_match(self):
        """For many random byte strings made of CR, LF, CRLF, NUL and other bytes, with and
        without a final newline: to_wire matches the reference, wire_size == len(to_wire), and
        the slice forms (``wire_size``, ``crlf_size``) count a slice of a larger buffer exactly like
        the copied slice."""
        rng = random.Random(20261128)
        for _ in range(3000):
            stored = b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 30)))
            wire = to_wire(stored)
            self.assertEqual(wire, reference(stored), stored)
            self.assertEqual(wire_size(stored), len(wire), stored)
            self.assertNotIn(b"\0", wire)
            self.assertTrue(wire == b"" or wire.endswith(b"\r\n"), stored)
            self.assertEqual(wire.count(b"\n"), wire.count(b"\r\n"), stored)
            start = rng.randrange(0, len(stored) + 1)
            end = rng.randrange(start, len(stored) + 1)
            self.assertEqual(wire_size(stored, start, end), len(to_wire(stored[start:end])),
                             (stored, start, end))
            self.assertEqual(crlf_size(stored, start, end), len(crlf(stored[start:end])),
                             (stored, start, end))

    def test_to_wire_is_crlf_of_complete(self):
        """A message's wire form is its completed bytes with CRLF line ends, so the parts of a
        completed message converted with ``crlf`` add up to the wire form."""
        rng = random.Random(7)
        for _ in range(500):
            stored = b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 20)))
            full = complete(stored)
            self.assertEqual(to_wire(stored), crlf(full))
            cut = full.find(b"\n") + 1  # split after a line end, as sections are
            self.assertEqual(crlf(full[:cut]) + crlf(full[cut:]), to_wire(stored))
