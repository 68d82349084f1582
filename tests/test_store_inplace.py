"""The in-place expunge of mailsuite.store.mboxinplace: the result, and a crash after (or in the
middle of) every system call that writes, syncs, truncates or removes, then the recovery."""

from __future__ import annotations

import os
import random
import shutil
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store import mboxinplace
from mailsuite.store.mboxfile import MboxFile
from mailsuite.store.mboxformat import parse, to_stored

FLAGS = [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Flagged", "Work"}),
         frozenset({"\\Seen", "\\Answered", "\\Deleted", "$Label1", "Another"})]


class Crash(BaseException):
    """The process dies here (nothing catches a BaseException on the way out but the locks'
    release, as the kernel releases them when a process dies)."""


class CrashingIO(mboxinplace.IO):
    """The ``at``-th call that changes a file is done (or with ``tear`` half done, for writes
    and copies), then the process 'dies'."""

    CHANGING = ("pwrite", "copy_file_range", "fsync", "fdatasync", "ftruncate", "unlink", "open")

    def __init__(self, at: int, tear: bool) -> None:
        self.calls = 0
        for name in self.CHANGING:
            setattr(self, name, self._wrap(name, getattr(mboxinplace.IO, name)))
        self.at, self.tear = at, tear

    def _wrap(self, name: str, real: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            if self.calls != self.at:
                return real(*args, **kw)
            try:
                if self.tear and name == "pwrite" and len(args[1]) > 1:
                    real(args[0], args[1][: len(args[1]) // 2], args[2])
                elif self.tear and name == "copy_file_range" and args[1] > 1:
                    real(args[0], args[1] // 2, args[2], args[3])
                else:
                    real(*args, **kw)
            finally:
                raise Crash(name)  # also after a call that failed

        return call


def message(i: int, size: int, status: bytes = b"") -> bytes:
    return (b"Subject: message %d\nMessage-ID: <%d@example.test>\n%s\n" % (i, i, status)
            + b"".join(b"line %d of %d\n" % (n, i) for n in range(size)))


class InPlaceCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.spool = os.path.join(self.root, "spool")
        self.home = os.path.join(self.root, "home", "boss")
        os.makedirs(self.spool)
        os.makedirs(self.home)
        self.account = Account("boss", os.getuid(), os.getgid(), self.home)
        self.path = os.path.join(self.spool, "boss")
        self.patch(mboxinplace, "INPLACE_MIN", 0)

    def mfile(self) -> MboxFile:
        return MboxFile(self.account, self.path, os.path.join(self.home, "mail"), time.time)

    def make(self, sizes: list[int], junk: bool = False, status_every: int = 3) -> None:
        with open(self.path, "wb") as f:
            if junk:
                f.write(b"junk before the first message\n\n")
            for i, size in enumerate(sizes):
                status = b"Status: RO\nX-Status: A\n" if i % status_every == 1 else b""
                f.write(b"From a@example.test  Tue Nov 28 06:01:02 2026\n")
                f.write(to_stored(message(i, size, status)) + b"\n")

    def prepared(self, gone_at: list[int], flagged: dict[int, int]) -> tuple[
        MboxFile, ix.Index, list[int], dict[int, bytes]
    ]:
        """An MboxFile with its index, flags set (dirty status headers), ``gone_at`` hidden."""
        mf = self.mfile()
        state, _ = mf.refresh(None)
        uids = [e.uid for e in state.entries]
        if flagged:
            state, _ = mf.set_flags(state, {uids[i]: FLAGS[f] for i, f in flagged.items()})
        gone = [uids[i] for i in gone_at]
        state, _, _ = mf.hide(state, gone)
        served = {e.uid: mf.read(e) for e in state.entries if e.uid not in gone}
        return mf, state, gone, served  # type: ignore[return-value]

    def file(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def check_contents(self, served: dict[int, bytes], uids_kept: bool = True) -> ix.Index:
        """A new process opens the file: recovery; each kept message once, in order, as served
        before; nothing else (a parse from scratch finds the same)."""
        mf = self.mfile()
        state, _ = mf.refresh(None)
        if state.hidden:  # what MboxMailbox does at its first publish: compact again
            state, _, _ = mf.expunge(state, sorted(state.hidden))
        self.assertFalse(os.path.exists(os.path.join(self.spool, ".boss.mailsuite-expunge")))
        got = [mf.read(e) for e in state.entries]
        self.assertEqual(got, list(served.values()))
        if uids_kept:
            self.assertEqual([e.uid for e in state.entries], list(served))
        data = self.file()
        parsed = parse(data, 0, len(data), False)
        self.assertEqual(len(parsed), len(served))
        return state


class InPlaceTests(InPlaceCase):
    def test_result_and_index(self):
        """Messages after the first removed one move down; the index's entries shift (every
        other field as it was); status headers are written where the room allows; a restart
        reads the index, the file is not parsed again."""
        # mboxinplace shifts the first five fields by position and carries all the others
        self.assertEqual(ix.Entry._fields[:5], ("uid", "offset", "body_off", "hdr_end", "end"))
        self.make([3, 40, 2, 5, 7, 1, 30, 2], junk=True)
        mf, state, gone, served = self.prepared([2, 5], {3: 1, 4: 2, 6: 3, 0: 2})
        before = self.file()
        new, changes, removed = mf.expunge(state, gone)
        self.assertEqual((removed, changes.expunged), (gone, gone))
        data = self.file()
        self.assertLess(len(data), len(before))
        self.assertEqual(data[: state.entries[2].offset], before[: state.entries[2].offset])
        self.assertEqual([mf.read(e) for e in new.entries], list(served.values()))
        for old in state.entries:
            e = next((n for n in new.entries if n.uid == old.uid), None)
            if e is not None and e.fingerprint == old.fingerprint:
                self.assertEqual((e.flags, e.date, e.tz, e.size), (old.flags, old.date, old.tz,
                                                                   old.size))
        self.assertEqual(ix.Stamp.of(os.stat(self.path)), new.stamp)
        again, _ = self.mfile().refresh(None)
        self.assertEqual(again.entries, new.entries)
        self.check_contents(served)

    def test_status_headers_written_when_there_is_room(self):
        """A dirty message after a big removed one gets its Status headers in place."""
        self.make([200, 1, 1])
        mf, state, gone, _ = self.prepared([0], {1: 1, 2: 2})
        mf.expunge(state, gone)
        data = self.file()
        self.assertIn(b"Subject: message 1\nMessage-ID: <1@example.test>\nStatus: RO\n", data)
        self.assertIn(b"Status: O\nX-Status: F\nX-Keywords: Work\n", data)

    def test_no_room_leaves_headers(self):
        """A dirty message right after a tiny removed one whose new headers would not fit is
        moved as it is (still read with its flags from the index)."""
        with open(self.path, "wb") as f:
            f.write(b"From a@b  Tue Nov 28 06:01:02 2026\nS: x\n\n\n")
            f.write(b"From a@b  Tue Nov 28 06:01:02 2026\nSubject: y\n\nbody\n\n")
        mf, state, gone, served = self.prepared([0], {1: 3})
        new, _, _ = mf.expunge(state, gone)
        self.assertEqual(self.file(), b"From a@b  Tue Nov 28 06:01:02 2026\nSubject: y\n\nbody\n\n")
        self.assertEqual(new.entries[0].flags, FLAGS[3])
        self.check_contents(served)

    def test_copies_through_buffer_without_copy_file_range(self):
        self.make([5, 9, 2, 4])

        def refuse(*args: object) -> int:
            raise OSError(22, "Invalid argument")

        refusing = mboxinplace.IO()
        refusing.copy_file_range = refuse  # type: ignore[method-assign]
        self.patch(mboxinplace, "io", refusing)
        mf, state, gone, served = self.prepared([1], {})
        mf.expunge(state, gone)
        self.check_contents(served)

    def test_journal_cut_short_is_dropped(self):
        """A journal without its end mark: the mbox was never touched; it is removed."""
        self.make([2, 2, 2])
        before = self.file()
        journal = os.path.join(self.spool, ".boss.mailsuite-expunge")
        with open(journal, "wb") as f:
            f.write(mboxinplace.MAGIC + b"I 1 2 3 4\nM 0 5")
        state, _ = self.mfile().refresh(None)
        self.assertFalse(os.path.exists(journal))
        self.assertEqual(self.file(), before)
        self.assertEqual(len(state.entries), 3)

    def test_journal_of_another_file_is_dropped(self):
        self.make([2, 2, 2])
        before = self.file()
        p = mboxinplace.Plan(os.stat(self.path).st_ino + 1, len(before), 10, [(0, 10, 5)])
        journal = os.path.join(self.spool, ".boss.mailsuite-expunge")
        with open(journal, "wb") as f:
            f.write(p.encode())
        self.mfile().refresh(None)
        self.assertFalse(os.path.exists(journal))
        self.assertEqual(self.file(), before)

    def test_reads_during_the_move_are_not_trusted(self):
        """A read made while an in-place expunge runs says None (the caller reads again after
        it): the seqlock."""
        self.make([2, 2, 2])
        mf, state, _, _ = self.prepared([0], {})
        e = state.entries[2]
        with mf.moving:
            self.assertIsNone(mf.read(e))
        self.assertIsNotNone(mf.read(e))

    def test_failure_half_way_distrusts_reads_until_recovered(self):
        """An I/O error in the middle of the moves: reads made without the locks say None
        (the caller refreshes) until the next lock has finished the expunge."""
        for at in range(8, 16):  # from the first write to the mbox on
            self.make([2, 2, 30, 2])
            mf, state, gone, served = self.prepared([0], {})
            self.patch(mboxinplace, "io", CrashingIO(at, False))
            self.assertRaises(Crash, mf.expunge, state, gone)
            self.patch(mboxinplace, "io", mboxinplace.IO())
            if mf.moving.count % 2:
                self.assertIsNone(mf.read(state.entries[3]))
            new, _ = mf.refresh(state)  # the lock: recovery
            self.assertEqual(mf.moving.count % 2, 0)
            self.assertEqual([mf.read(e) for e in new.entries if e.uid not in new.hidden],
                             list(served.values()))

    def test_too_many_steps_rewrites_whole(self):
        """A tiny removed message before a long run: steps as short as it; beyond MAX_STEPS
        the file is rewritten whole instead, without the in-place plan's entries ever made."""
        self.make([0, 400, 3])
        mf, state, gone, served = self.prepared([0], {})
        shift = state.entries[1].offset - state.entries[0].offset
        self.patch(mboxinplace, "MAX_STEPS", (state.stamp.size - state.entries[1].offset)
                   // shift - 1)
        made = []
        self.patch(mboxinplace.Layout, "entries", lambda layout: made.append(layout))
        ino = os.stat(self.path).st_ino
        mf.expunge(state, gone)
        self.assertNotEqual(os.stat(self.path).st_ino, ino)
        self.assertEqual(made, [])
        self.check_contents(served)

    def test_entries_made_before_the_file_is_touched(self):
        """The kept entries are made before the journal and the moves: a failure making them
        (MemoryError under pressure) leaves the file as it was, not rewritten behind a state
        whose offsets and hidden UIDs no longer fit it (a reparse then gave the kept twin of an
        expunged message the hidden UID, and the next compaction deleted it)."""
        self.make([3, 40, 2, 5])
        mf, state, gone, _served = self.prepared([1], {})
        before = self.file()

        def boom(layout):
            raise MemoryError

        self.patch(mboxinplace.Layout, "entries", boom)
        self.assertRaises(MemoryError, mf.expunge, state, gone)
        self.assertEqual(self.file(), before)
        self.assertFalse(os.path.exists(os.path.join(self.spool, ".boss.mailsuite-expunge")))

    def test_small_files_are_rewritten_whole(self):
        """Below INPLACE_MIN the whole file is written anew (a new inode)."""
        self.patch(mboxinplace, "INPLACE_MIN", 1 << 30)
        self.make([2, 2, 2])
        ino = os.stat(self.path).st_ino
        mf, state, gone, served = self.prepared([1], {})
        mf.expunge(state, gone)
        self.assertNotEqual(os.stat(self.path).st_ino, ino)
        self.check_contents(served)


class CrashTests(InPlaceCase):
    """A crash after every step (and in the middle of every write), then a new process."""

    def crash_everywhere(self, sizes: list[int], gone_at: list[int], flagged: dict[int, int],
                         junk: bool = False, appended: bytes = b"") -> int:
        """``appended``: a message another program appends after each crash, before the
        recovery (it broke the stale dotlock): kept whole, once, behind the others."""
        self.make(sizes, junk)
        original = self.file()
        index_dir = os.path.join(self.home, "mail")
        mf, state, gone, served = self.prepared(gone_at, flagged)
        saved = self.mktemp()
        shutil.copytree(index_dir, saved)
        mf.expunge(state, gone)
        final = self.file()
        steps = 0
        for at in range(1, 10_000):
            for tear in (False, True):
                with open(self.path, "wb") as f:
                    f.write(original)
                shutil.rmtree(index_dir)
                shutil.copytree(saved, index_dir)
                crashing = CrashingIO(at, tear)
                self.patch(mboxinplace, "io", crashing)
                mf, state, _, _ = self.prepared([], {})
                state, _, _ = mf.hide(state, gone)
                try:
                    mf.expunge(state, gone)
                except Crash:
                    crashed = True
                else:
                    crashed = False
                self.patch(mboxinplace, "io", mboxinplace.IO())
                if not crashed:
                    self.assertEqual(self.file(), final)
                    return steps
                steps += 1
                if appended:
                    with open(self.path, "ab") as f:
                        f.write(b"From p@example.test  Tue Nov 28 06:01:02 2026\n")
                        f.write(appended + b"\n")
                    self.check_contents({**served, 0: appended}, uids_kept=False)
                    continue
                # recovery alone leaves either file, nothing in between
                recovered = self.mfile()
                recovered.refresh(None)
                self.assertIn(self.file(), (original, final), f"crash at call {at}, {tear}")
                self.check_contents(served)
        self.fail("never finished")

    def test_every_step(self):
        steps = self.crash_everywhere([4, 30, 2, 9, 1, 12, 3, 3], [1, 4, 6], {2: 1, 3: 2, 7: 3},
                                      junk=True)
        self.assertGreater(steps, 20)

    def test_every_step_then_mail_appended(self):
        """After a crash at any step, another program appends a message shorter, then longer,
        than the removed bytes: the recovery keeps it whole, once, after the kept ones."""
        for lines in (0, 100):
            self.setUp()
            body = b"".join(b"appended line %d\n" % n for n in range(lines))
            self.crash_everywhere([4, 30, 2, 9, 1, 12, 3, 3], [1, 4, 6], {2: 1, 3: 2, 7: 3},
                                  appended=b"Subject: delivered later\n\nhello\n" + body)

    def test_small_shift_many_steps(self):
        """A tiny removed message before big ones: many steps no longer than the shift."""
        self.crash_everywhere([0, 20, 20], [0], {1: 1})

    def test_last_message(self):
        self.crash_everywhere([3, 3, 3], [2], {0: 1})

    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.data())
    def test_random_mailboxes(self, data: Any) -> None:
        sizes = data.draw(st.lists(st.integers(0, 25), min_size=2, max_size=7))
        gone_at = data.draw(st.lists(st.integers(0, len(sizes) - 1), min_size=1, max_size=3,
                                     unique=True))
        flagged = data.draw(st.dictionaries(st.integers(0, len(sizes) - 1),
                                            st.integers(0, len(FLAGS) - 1), max_size=4))
        self.setUp()  # a fresh directory for each example
        self.crash_everywhere(sizes, sorted(gone_at), flagged, junk=data.draw(st.booleans()))


class AfterTheCrashTests(InPlaceCase):
    def crashed(self, at: int) -> tuple[dict[int, bytes], bytes]:
        """An expunge killed at the ``at``-th call; (what the kept messages read, the file)."""
        self.make([3, 30, 2, 9, 1, 12])
        mf, state, gone, served = self.prepared([1, 4], {2: 1})
        self.patch(mboxinplace, "io", CrashingIO(at, False))
        self.assertRaises(Crash, mf.expunge, state, gone)
        self.patch(mboxinplace, "io", mboxinplace.IO())
        self.assertTrue(os.path.exists(os.path.join(self.spool, ".boss.mailsuite-expunge")))
        return served, self.file()

    def test_mail_appended_after_the_crash_is_kept(self):
        """Postfix delivered after the crash (it broke the stale dotlock) before the recovery:
        its message ends up behind the kept ones, once."""
        for at in (8, 12, 20):
            self.setUp()
            served, _ = self.crashed(at)
            with open(self.path, "ab") as f:
                f.write(b"From p@example.test  Tue Nov 28 06:01:02 2026\n")
                f.write(b"Subject: delivered later\n\nhello\n\n")
            mf = self.mfile()
            state, _ = mf.refresh(None)
            if state.hidden:
                state, _, _ = mf.expunge(state, sorted(state.hidden))
            got = [mf.read(e) for e in state.entries]
            self.assertEqual(got[:-1], list(served.values()), f"crash at {at}")
            self.assertEqual(got[-1], b"Subject: delivered later\n\nhello\n")

    def truncate_call(self) -> int:
        """The number of the call (counted as CrashingIO counts) that truncates the mbox at the
        end of the expunge ``crashed`` does."""
        self.make([3, 30, 2, 9, 1, 12])
        mf, state, gone, _ = self.prepared([1, 4], {2: 1})
        names: list[str] = []
        recording = mboxinplace.IO()
        for name in CrashingIO.CHANGING:
            real = getattr(mboxinplace.IO, name)
            setattr(recording, name,
                    lambda *a, _n=name, _r=real, **k: (names.append(_n), _r(*a, **k))[1])
        self.patch(mboxinplace, "io", recording)
        mf.expunge(state, gone)
        self.patch(mboxinplace, "io", mboxinplace.IO())
        return len(names) - names[::-1].index("ftruncate")

    def test_mail_appended_after_the_crash_around_the_truncate(self):
        """A crash just before or just after the final truncate, then mail appended shorter or
        longer than the bytes the truncate removes: the recovery keeps it whole, once."""
        truncate = self.truncate_call()
        for at in (truncate - 1, truncate):  # after the journal's last sync; after the truncate
            for lines in (0, 200):  # shorter than the removed bytes; longer
                self.setUp()
                served, _ = self.crashed(at)
                body = b"".join(b"appended line %d\n" % n for n in range(lines))
                with open(self.path, "ab") as f:
                    f.write(b"From p@example.test  Tue Nov 28 06:01:02 2026\n")
                    f.write(b"Subject: delivered later\n\nhello\n" + body + b"\n")
                mf = self.mfile()
                state, _ = mf.refresh(None)
                if state.hidden:
                    state, _, _ = mf.expunge(state, sorted(state.hidden))
                got = [mf.read(e) for e in state.entries]
                self.assertEqual(got[:-1], list(served.values()), f"crash at {at}, {lines}")
                self.assertEqual(got[-1], b"Subject: delivered later\n\nhello\n" + body)
                data = self.file()
                self.assertEqual(len(parse(data, 0, len(data), False)), len(served) + 1)

    def test_journal_found_under_shared_locks_is_recovered_exclusively(self):
        """A journal that appears between the look before the shared locks and their taking
        (a crash of another process meanwhile) is recovered under exclusive locks only."""
        from mailsuite.store import mboxfile

        served, _ = self.crashed(12)
        modes: list[bool] = []
        under: list[bool] = []
        real_lock, real_recover = mboxfile.locked_mailbox, mboxinplace.recover
        real_pending = mboxinplace.pending
        looks = iter([False])  # the first look (before any lock) finds no journal

        def lock(*args: Any, **kw: Any) -> Any:
            modes.append(kw["exclusive"])
            return real_lock(*args, **kw)

        def recover(*args: Any, **kw: Any) -> bool:
            under.append(modes[-1])
            return real_recover(*args, **kw)

        self.patch(mboxfile, "locked_mailbox", lock)
        self.patch(mboxinplace, "recover", recover)
        self.patch(mboxinplace, "pending", lambda *a: next(looks, None) is None and
                   real_pending(*a))
        self.mfile().refresh(None)
        self.assertEqual(under, [True])
        self.assertEqual(modes[0], False)
        self.check_contents(served)

    def test_journal_that_keeps_coming_back_is_an_error(self):
        """Bounded: a journal still there after each exclusive pass is a StoreError."""
        from mailsuite.store.interfaces import StoreError

        self.make([2, 2])
        self.patch(mboxinplace, "pending", lambda *a: True)
        self.patch(mboxinplace, "recover", lambda *a: True)
        self.assertRaises(StoreError, self.mfile().refresh, None)

    def test_recovered_by_another_process_reads_trusted_again(self):
        """An expunge of ours failed half way (reads distrusted), another process recovered
        it: our next lock finds no journal and trusts reads again."""
        self.make([2, 2, 30, 2])
        mf, state, gone, served = self.prepared([0], {})
        self.patch(mboxinplace, "io", CrashingIO(12, False))
        self.assertRaises(Crash, mf.expunge, state, gone)
        self.patch(mboxinplace, "io", mboxinplace.IO())
        self.assertEqual(mf.moving.count % 2, 1)
        self.mfile().refresh(None)  # the other process
        new, _ = mf.refresh(state)
        self.assertEqual(mf.moving.count % 2, 0)
        self.assertEqual([mf.read(e) for e in new.entries if e.uid not in new.hidden],
                         list(served.values()))

    def test_directory_gone_after_the_exclusive_pass(self):
        """The mailbox's directory removed while the journal was recovered: the shared pass
        finds no mailbox (as the first look would), no FileNotFoundError."""
        from mailsuite.store import mboxfile

        self.crashed(12)
        real_open_dir, real_recover, after = mboxfile.open_dir, mboxinplace.recover, []

        def open_dir(*args: Any, **kw: Any) -> Any:
            if after == [1]:  # the first walk after the exclusive pass's recovery
                after.append(2)
                raise FileNotFoundError(2, "gone")
            return real_open_dir(*args, **kw)

        def recover(*args: Any, **kw: Any) -> bool:
            after.append(1)
            return real_recover(*args, **kw)

        self.patch(mboxfile, "open_dir", open_dir)
        self.patch(mboxinplace, "recover", recover)
        self.mfile().refresh(None)
        self.assertEqual(after, [1, 2])
        self.assertFalse(os.path.exists(os.path.join(self.spool, ".boss.mailsuite-expunge")))

    def test_server_start_finishes_it(self):
        """cleanup.clean_spool at start finishes the expunge before it removes stale locks."""
        from mailsuite.store import cleanup

        served, _ = self.crashed(12)
        with open(self.path + ".lock", "w") as f:
            f.write("999999999\n")  # the dead process's dotlock
        removed = cleanup.clean_spool(self.spool)
        self.assertIn(os.path.join(self.spool, ".boss.mailsuite-expunge"), removed)
        self.assertEqual(sorted(os.listdir(self.spool)), ["boss"])
        self.check_contents(served)


class RandomRoundsTests(InPlaceCase):
    def test_rounds(self):
        """Rounds of flag changes and expunges in place keep every message readable."""
        rnd = random.Random(5)
        self.make([rnd.randrange(0, 40) for _ in range(40)], junk=True)
        with open(self.path, "ab") as f:  # CRLF, a body line like a header, no final newline
            f.write(b"From x@example.test  Tue Nov 28 06:01:02 2026\n")
            f.write(b"Subject: crlf\r\n\r\nStatus: RO\r\nbody\r\n\n")
            f.write(b"From x@example.test  Tue Nov 28 06:01:02 2026\n")
            f.write(b"Subject: last\n\nno final newline")
        mf = self.mfile()
        state, _ = mf.refresh(None)
        served = {e.uid: mf.read(e) for e in state.entries}
        for _ in range(5):
            uids = [e.uid for e in state.entries]
            state, _ = mf.set_flags(state, {u: rnd.choice(FLAGS) for u in rnd.sample(uids, 8)})
            gone = rnd.sample(uids, 4)
            state, _, _ = mf.hide(state, gone)
            state, _, _ = mf.expunge(state, gone)
            for u in gone:
                served.pop(u)
            self.assertEqual({e.uid: mf.read(e) for e in state.entries}, served)
        self.check_contents(served)

