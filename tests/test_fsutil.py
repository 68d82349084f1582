"""mailsuite.fsutil: write_all and atomic_write, the one way files are written whole."""

from __future__ import annotations

import os
import stat

from twisted.trial import unittest

from mailsuite import fsutil


class WriteAllTests(unittest.TestCase):
    def test_short_writes_continued(self):
        """A write that takes only part of the data is continued until all is written."""
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        real, sizes = os.write, []

        def short(fd, data):
            sizes.append(len(data))
            return real(fd, bytes(data[:3]))

        self.patch(fsutil.os, "write", short)
        fsutil.write_all(fd, b"0123456789")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789")
        self.assertEqual(sizes, [10, 7, 4, 1])


class AtomicWriteTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "file")
        self.synced: list[str] = []
        real = fsutil.fsync_dir
        self.patch(fsutil, "fsync_dir", lambda d: (self.synced.append(d), real(d)))

    def read(self, name="file"):
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()

    def test_replaces_with_mode_and_syncs_the_directory(self):
        with open(self.path, "wb") as f:
            f.write(b"old")
        os.chmod(self.path, 0o644)
        fsutil.atomic_write(self.path, b"new", mode=0o640)
        self.assertEqual(self.read(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(os.listdir(self.dir), ["file"])
        self.assertEqual(self.synced, [self.dir])

    def test_stale_temp_file_removed_first(self):
        with open(self.path + ".tmp", "wb") as f:
            f.write(b"left by a crash")
        fsutil.atomic_write(self.path, b"new")
        self.assertEqual(self.read(), b"new")
        self.assertEqual(os.listdir(self.dir), ["file"])

    def test_error_before_rename_keeps_the_old_file(self):
        with open(self.path, "wb") as f:
            f.write(b"old")

        def broken(fd):
            raise OSError(28, "No space left on device")

        self.patch(fsutil.os, "fsync", broken)
        self.assertRaises(OSError, fsutil.atomic_write, self.path, b"new", tmp=self.path + ".x")
        self.assertEqual(self.read(), b"old")
        self.assertEqual(os.listdir(self.dir), ["file"])

    def test_sync_callable_and_undo(self):
        """A callable ``sync`` gets the new file's descriptor; with ``undo`` its failure
        leaves nothing, without it the new file stays (it was renamed into place)."""
        seen = []

        def sync(fd):
            seen.append(os.fstat(fd).st_size)
            raise OSError(5, "Input/output error")

        self.assertRaises(OSError, fsutil.atomic_write, self.path, b"data", sync=sync, undo=True)
        self.assertEqual((seen, os.listdir(self.dir)), ([4], []))
        self.assertRaises(OSError, fsutil.atomic_write, self.path, b"data", sync=sync)
        self.assertEqual(self.read(), b"data")
        self.assertEqual(self.synced, [])

    def test_pieces_written_as_they_come(self):
        """An iterable of pieces is written piece by piece (never joined first): the file
        holds them in order; bytes-like data (a memoryview) is still one piece."""
        written = []
        real = fsutil.os.write
        self.patch(fsutil.os, "write", lambda fd, data: (written.append(bytes(data)),
                                                         real(fd, data))[1])
        fsutil.atomic_write(self.path, iter([b"one ", b"", b"two ", b"three"]))
        self.assertEqual((self.read(), written), (b"one two three", [b"one ", b"two ", b"three"]))
        fsutil.atomic_write(self.path, memoryview(b"view"))
        self.assertEqual((self.read(), written[-1]), (b"view", b"view"))

    def test_no_sync(self):
        fsutil.atomic_write(self.path, b"data", sync=None)
        self.assertEqual((self.read(), self.synced), (b"data", []))

    def test_names_in_a_directory_fd(self):
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, dir_fd)
        fsutil.atomic_write("file", b"data", tmp="file.new", dir_fd=dir_fd)
        self.assertEqual(self.read(), b"data")
        self.assertEqual(os.listdir(self.dir), ["file"])
        self.assertEqual(self.synced, [])  # the directory was fsync'ed through dir_fd

    def test_temp_file_elsewhere(self):
        """The queue writes in tmp/ and renames into active/: the target's directory is synced."""
        tmpdir = os.path.join(self.dir, "tmp")
        os.mkdir(tmpdir)
        fsutil.atomic_write(self.path, b"data", tmp=os.path.join(tmpdir, "q1"))
        self.assertEqual((self.read(), os.listdir(tmpdir), self.synced), (b"data", [], [self.dir]))

    def test_symlinked_temp_name_refused(self):
        """The temp name is created O_EXCL|O_NOFOLLOW: a link planted there is not followed."""
        target = os.path.join(self.dir, "victim")
        with open(target, "wb") as f:
            f.write(b"victim")
        self.patch(fsutil.os, "unlink", lambda *a, **k: None)  # the planted link stays
        os.symlink(target, self.path + ".tmp")
        self.assertRaises(FileExistsError, fsutil.atomic_write, self.path, b"data")
        self.assertEqual(self.read("victim"), b"victim")
