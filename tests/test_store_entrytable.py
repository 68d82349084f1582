"""``store.entrytable``: an index's entries in columns, read and changed as a list of them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.store import entrytable as et
from mailsuite.store.entrytable import Entry, EntryTable

SEEN = frozenset({"\\Seen"})
FLAGGED = frozenset({"\\Flagged", "$Label1"})


def entry(uid: int, flags: frozenset[str] = frozenset(), fp: str | None = None,
          modseq: int = 1) -> Entry:
    at = uid * 1000
    return Entry(uid, at, at + 40, at + 300, at + 900, 930 + uid, 1_700_000_000 + uid,
                 f"{uid:024x}" if fp is None else fp, "s" if uid % 2 else "", flags,
                 -18000 if uid % 3 else 3600, modseq, 1_700_000_100 + uid)


ENTRIES = [entry(u, SEEN if u % 2 else frozenset()) for u in (1, 2, 5, 9, 10)]


class EntryTableTests(unittest.TestCase):
    def test_reads_back_as_the_entries(self):
        table = EntryTable(ENTRIES)
        self.assertEqual(len(table), 5)
        self.assertEqual(list(table), ENTRIES)
        self.assertEqual([table[i] for i in range(5)], ENTRIES)
        self.assertEqual((table[-1], table[-5]), (ENTRIES[-1], ENTRIES[0]))
        self.assertIsInstance(table[0], Entry)
        self.assertEqual(table[2].internal_date, ENTRIES[2].internal_date)
        self.assertEqual(table, ENTRIES)
        self.assertEqual(table, EntryTable(ENTRIES))
        self.assertNotEqual(table, ENTRIES[:4])
        for bad in (5, -6):
            self.assertRaises(IndexError, table.__getitem__, bad)

    def test_slices(self):
        table = EntryTable(ENTRIES)
        self.assertEqual(list(table[1:4]), ENTRIES[1:4])
        self.assertEqual(list(table[3:1]), [])
        self.assertEqual(list(table[::2]), ENTRIES[::2])
        self.assertEqual(list(table[-2:]), ENTRIES[-2:])
        self.assertIsInstance(table[1:3], EntryTable)

    def test_fingerprints_of_other_widths(self):
        """Shorter ones are padded in the table and read back as they were; one longer than
        the width, or not ASCII, or with a NUL, is refused and changes nothing."""
        table = EntryTable([entry(1, fp="abc"), entry(2, fp="")])
        self.assertEqual([e.fingerprint for e in table], ["abc", ""])
        self.assertEqual(table[0].fingerprint, "abc")
        self.assertEqual(et.padded_fingerprints(table), b"abc".ljust(24, b"\0") + b"\0" * 24)
        self.assertEqual(et.padded_fingerprints(list(table)), et.padded_fingerprints(table))
        for bad in ("x" * 25, "caf\u00e9", "a\0b"):
            self.assertRaises(ValueError, table.append, entry(3, fp=bad))
            self.assertRaises(ValueError, table.__setitem__, 0, entry(1, fp=bad))
        self.assertEqual(list(table), [entry(1, fp="abc"), entry(2, fp="")])

    def test_copy_shares_until_either_changes(self):
        table = EntryTable(ENTRIES)
        copy = table.copy()
        copy[1] = ENTRIES[1]._replace(flags=FLAGGED, modseq=7)
        self.assertEqual(list(table), ENTRIES)  # the original as it was
        self.assertEqual(copy[1], ENTRIES[1]._replace(flags=FLAGGED, modseq=7))
        self.assertIs(copy.uid, table.uid)  # unchanged columns still shared
        self.assertIsNot(copy.flags, table.flags)
        table.append(entry(11))  # the original grows: the copy does not
        self.assertEqual(len(copy), 5)
        self.assertEqual(len(table), 6)
        copy.append(entry(12))
        self.assertEqual(copy[-1], entry(12))
        self.assertEqual(table[-1], entry(11))
        third = copy.copy()
        copy[0] = ENTRIES[0]._replace(offset=5, fingerprint="f" * 24)
        self.assertEqual(third[0], ENTRIES[0])
        self.assertEqual(copy[0].fingerprint, "f" * 24)

    def test_extend_add_insert_delete(self):
        table = EntryTable(ENTRIES[:2])
        table.extend(EntryTable(ENTRIES[2:3]))
        table.extend(ENTRIES[3:])
        self.assertEqual(list(table), ENTRIES)
        both = table[:2] + ENTRIES[2:]
        self.assertEqual(list(both), ENTRIES)
        table.insert(0, entry(0))
        table.insert(100, entry(20))
        table.insert(-1, entry(15))
        self.assertEqual([e.uid for e in table], [0, 1, 2, 5, 9, 10, 15, 20])
        del table[0]
        del table[-2:]
        del table[::2]
        self.assertEqual(list(table), ENTRIES[1::2])
        self.assertRaises(IndexError, table.__delitem__, 2)
        table[0:1] = [entry(3), entry(4)]
        self.assertEqual([e.uid for e in table], [3, 4, 9])

    def test_take_and_shifted(self):
        table = EntryTable(ENTRIES)
        self.assertEqual(list(table.take([4, 0, 2])), [ENTRIES[4], ENTRIES[0], ENTRIES[2]])
        moved = table.shifted(-7)
        self.assertEqual(list(moved), [e._replace(offset=e.offset - 7, body_off=e.body_off - 7,
                                                  hdr_end=e.hdr_end - 7, end=e.end - 7)
                                       for e in ENTRIES])
        self.assertEqual(list(table), ENTRIES)
        self.assertEqual(list(table.shifted(0)), ENTRIES)

    def test_columns_read_without_entries(self):
        """The helpers answer alike for a table and for a list of the same MessageInfos."""
        for seq in (EntryTable(ENTRIES), list(ENTRIES)):
            self.assertEqual(list(et.uids_of(seq)), [1, 2, 5, 9, 10])
            self.assertEqual([et.position(seq, u) for u in (0, 1, 3, 10, 11)], [0, 0, 2, 4, 5])
            self.assertEqual(et.position(seq, 9, 0, 3), 3)
            self.assertEqual(et.uids_between(seq, 1, 3), [2, 5])
            self.assertEqual(et.uids_between(seq, 3, 99), [9, 10])
            self.assertEqual(et.uid_at(seq, 4), 10)
            self.assertRaises(IndexError, et.uid_at, seq, 5)
            self.assertEqual(list(et.flag_sets(seq)), [e.flags for e in ENTRIES])
            self.assertEqual(list(et.sizes_of(seq)), [e.size for e in ENTRIES])
        deleted = EntryTable([entry(1, frozenset({"\\Deleted"})), entry(2)])
        self.assertEqual(et.deleted_sizes(deleted), [931])

    def test_of_keeps_a_table(self):
        table = EntryTable(ENTRIES)
        self.assertIs(EntryTable.of(table), table)
        self.assertEqual(list(EntryTable.of(ENTRIES)), ENTRIES)


_ops = st.lists(st.tuples(st.sampled_from(["append", "set", "copy", "del", "insert", "extend"]),
                          st.integers(0, 30), st.sampled_from([frozenset(), SEEN, FLAGGED])),
                max_size=25)


class EntryTableModelTests(unittest.TestCase):
    """Any mix of changes to a table and to copies of it reads back as the same changes to
    lists do (each copy independent of the others)."""

    @settings(max_examples=150, deadline=None)
    @given(_ops)
    def test_as_lists(self, ops: list[tuple[str, int, frozenset[str]]]) -> None:
        tables, lists = [EntryTable(ENTRIES)], [list(ENTRIES)]
        for step, (op, n, flags) in enumerate(ops):
            k = n % len(tables)
            table, model = tables[k], lists[k]
            new = entry(100 + step, flags, modseq=n)
            if op == "append":
                table.append(new)
                model.append(new)
            elif op == "extend":
                table.extend(EntryTable([new]) if n % 2 else [new])
                model.extend([new])
            elif op == "insert":
                table.insert(n, new)
                model.insert(n, new)
            elif op == "copy":
                tables.append(table.copy())
                lists.append(list(model))
            elif model and op == "set":
                i = n % len(model)
                table[i] = model[i] = model[i]._replace(flags=flags, modseq=n)
            elif model and op == "del":
                i = n % len(model)
                del table[i]
                del model[i]
            for t, m in zip(tables, lists, strict=True):
                self.assertEqual(list(t), m)
