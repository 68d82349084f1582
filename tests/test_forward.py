"""Tests for mailsuite.mta.forward: local(8) expansion (aliases, :include:, ~/.forward, owner-)
and delivery to |command and /file targets with their privileges and exit codes."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import sys
import tempfile

from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.mta import asuser, forward
from mailsuite.mta.aliases import AliasMap
from mailsuite.mta.asuser import Privileges
from mailsuite.mta.forward import (
    Expander,
    File,
    Program,
    Refused,
    Remote,
    TargetFailed,
)
from mailsuite.store import locking
from tests.fakes import FakeAccounts

ROOT = os.geteuid() == 0


class ExpandCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        uid, gid = os.getuid(), os.getgid()
        self.boss = Account("boss", uid, gid, self.home("boss"))
        self.alice = Account("alice", uid, gid, self.home("alice"))
        self.nobody = Account("nobody", 65534, 65534, "/nonexistent")
        self.accounts = FakeAccounts(self.boss, self.alice, self.nobody)

    def home(self, user: str) -> str:
        path = os.path.join(self.dir, "home", user)
        os.makedirs(path, exist_ok=True)
        return path

    def write(self, name: str, text: str, mode: int = 0o644) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def expander(self, aliases: str) -> Expander:
        amap = AliasMap([self.write("aliases", aliases)], ["example.test"])
        return Expander(amap, self.accounts, "example.test", ["example.test"])

    def expand(self, aliases: str, name: str) -> list[object]:
        return self.expander(aliases).expand(name)


class AliasFormTests(ExpandCase):
    def test_list_and_recursion(self) -> None:
        """A list of names, one of them another alias, expands to each account once."""
        self.assertEqual(self.expand("all: team, boss\nteam: boss, alice\n", "ALL"),
                         [self.boss, self.alice])

    def test_not_an_alias(self) -> None:
        """A name that is no alias is the account's mailbox (case-insensitive)."""
        self.assertEqual(self.expand("x: y\n", "Boss"), [self.boss])

    def test_unknown(self) -> None:
        """An unknown name is refused 5.1.1 (kind 'unknown'); an unknown alias member names the
        file and line."""
        e = self.assertRaises(Refused, self.expand, "x: boss\n", "ghost")
        self.assertEqual((e.code, e.kind), (550, "unknown"))
        e = self.assertRaises(Refused, self.expand, "team: boss,\n  ghost\n", "team")
        self.assertIn("'ghost'", e.resp)
        self.assertIn("line 1", e.resp)

    def test_backslash_stops_expansion(self) -> None:
        """`\\boss` is boss's mailbox though boss is an alias, and his .forward is skipped."""
        self.write("home/boss/.forward", "alice\n")
        self.assertEqual(self.expand("boss: \\boss, archive\narchive: alice\n", "boss"),
                         [self.boss, self.alice])

    def test_self_reference_and_loop(self) -> None:
        """`boss: boss, alice` is boss's mailbox plus alice; a->b->a with no account is a loop."""
        self.assertEqual(self.expand("boss: boss, alice\n", "boss"), [self.boss, self.alice])
        e = self.assertRaises(Refused, self.expand, "a: b\nb: a\n", "a")
        self.assertEqual((e.code, e.kind), (554, "loop"))

    def test_local_and_remote_addresses(self) -> None:
        """user@local-domain recurses like a name; another domain is a Remote destination."""
        out = self.expand("a: Boss@Example.Test, x@remote.test\n", "a")
        self.assertEqual(out[0], self.boss)
        self.assertEqual(out[1], Remote("x@remote.test", out[1].origin))

    def test_program_and_file_as_default_privs(self) -> None:
        """|cmd and /file in a root-owned alias file run as default_privs (nobody); in a file
        owned by someone else, as that owner."""
        out = self.expand('a: "|/bin/cat -n", /tmp/log\n', "a")
        owner = os.stat(os.path.join(self.dir, "aliases")).st_uid
        self.assertIsInstance(out[0], Program)
        self.assertEqual(out[0].command, "/bin/cat -n")
        self.assertIsInstance(out[1], File)
        self.assertEqual(out[1].path, "/tmp/log")
        expected = "nobody" if owner == 0 else pwd.getpwuid(owner).pw_name
        self.assertEqual(out[0].privs.user, expected)
        self.assertEqual(out[1].privs.user, expected)

    def test_owner_alias_becomes_sender(self) -> None:
        """With owner-team defined, team's command/file/remote targets carry owner-team@myorigin
        as envelope sender (delivery errors go there); other lists keep the sender."""
        out = self.expand('team: "|/bin/true", x@remote.test\nowner-team: boss\n', "team")
        self.assertEqual([d.sender for d in out], ["owner-team@example.test"] * 2)
        out = self.expand('team: "|/bin/true"\n', "team")
        self.assertIsNone(out[0].sender)

    def test_include(self) -> None:
        """:include:/file adds its names (commas/newlines, comments), recursively, and a file
        including itself stops."""
        inc = self.write("list", "# members\nboss\nalice, :include:" + self.dir + "/list\n")
        self.assertEqual(self.expand(f"l: :include:{inc}\n", "l"), [self.boss, self.alice])

    def test_include_refuses_commands_and_files(self) -> None:
        """As allow_mail_to_commands/files = alias, forward: |cmd or /file inside :include: is
        refused with the reason."""
        inc = self.write("list", '"|/bin/true"\n')
        e = self.assertRaises(Refused, self.expand, f"l: :include:{inc}\n", "l")
        self.assertIn("5.7.1 mail to command", e.resp)

    def test_include_missing_is_temporary(self) -> None:
        """An unreadable :include: file is a 451 (fix it and the mail comes), not a bounce."""
        e = self.assertRaises(Refused, self.expand, f"l: :include:{self.dir}/none\n", "l")
        self.assertEqual(e.code, 451)

    def test_maildir_target_refused(self) -> None:
        """`/path/` (maildir) is refused with a reason, not written as a file."""
        e = self.assertRaises(Refused, self.expand, "a: /tmp/dir/\n", "a")
        self.assertIn("maildir", e.resp)


class DotForwardTests(ExpandCase):
    def test_forward_replaces_mailbox(self) -> None:
        """~/.forward's addresses, commands and files replace the mailbox; they run as the user;
        `\\boss` keeps a copy in the mailbox (a boss of uid 0: as default_privs, nobody)."""
        self.write("home/boss/.forward", '\\boss, alice\n"|/bin/cat"\n/tmp/boss.copy\n', 0o600)
        out = self.expand("", "boss")
        self.assertEqual(out[:2], [self.boss, self.alice])
        user, uid = ("nobody", 65534) if self.boss.uid == 0 else ("boss", self.boss.uid)
        self.assertEqual((out[2].command, out[2].privs.user), ("/bin/cat", user))
        self.assertEqual((out[3].path, out[3].privs.uid), ("/tmp/boss.copy", uid))

    def test_forward_self_reference(self) -> None:
        """`boss` (without backslash) in boss's .forward is his mailbox, not a loop."""
        self.write("home/boss/.forward", "boss, alice\n")
        self.assertEqual(self.expand("", "boss"), [self.boss, self.alice])

    def test_unsafe_forward_ignored(self) -> None:
        """A group/world-writable .forward is ignored: mail goes to the mailbox."""
        path = self.write("home/boss/.forward", "alice\n")
        os.chmod(path, 0o666)
        self.assertEqual(self.expand("", "boss"), [self.boss])

    def test_foreign_owner_ignored(self) -> None:
        """A .forward owned by another user is ignored (root may own it)."""
        if not ROOT:
            raise unittest.SkipTest("needs root to chown")
        path = self.write("home/boss/.forward", "alice\n")
        os.chown(path, 4242, 4242)
        self.assertEqual(self.expand("", "boss"), [self.boss])

    def test_symlink_must_belong_to_user(self) -> None:
        """A .forward symlink to a root-owned file (e.g. /etc/passwd) is not read."""
        if not ROOT:
            raise unittest.SkipTest("the check matters when the target's owner differs")
        self.boss = Account("boss", 4242, 4242, self.home("boss"))
        self.accounts.by_name["boss"] = self.boss
        os.symlink("/etc/hostname", os.path.join(self.home("boss"), ".forward"))
        self.assertEqual(self.expand("", "boss"), [self.boss])

    def test_symlink_to_own_file_ignored(self) -> None:
        """As Postfix (lstat, then "not a regular file"), a symlinked .forward is ignored even
        when it points to a file of the user: it is opened with O_NOFOLLOW."""
        self.write("home/boss/mine", "alice\n")
        os.symlink("mine", os.path.join(self.home("boss"), ".forward"))
        self.assertEqual(self.expand("", "boss"), [self.boss])

    def test_empty_forward(self) -> None:
        """An empty or comment-only .forward is as none."""
        self.write("home/boss/.forward", "# nothing\n")
        self.assertEqual(self.expand("", "boss"), [self.boss])


class RightsCase(ExpandCase):
    """boss (uid 4242) and alice (4243) own their homes; files of root are mode 0600, as a
    user could not read them. Everything lives in a directory the users may search."""

    def setUp(self) -> None:
        if not ROOT:
            raise unittest.SkipTest("needs root to chown and to open as another user")
        super().setUp()
        os.chmod(self.dir, 0o755)
        for parent in (os.path.dirname(self.dir), os.path.join(self.dir, "home")):
            os.chmod(parent, 0o755)
        self.boss = Account("boss", 4242, 4242, self.home("boss"))
        self.alice = Account("alice", 4243, 4243, self.home("alice"))
        self.accounts = FakeAccounts(self.boss, self.alice, self.nobody)
        for account in (self.boss, self.alice):
            os.chown(account.home, account.uid, account.gid)
        self.secret = self.write("secret", "topsecret\n", 0o600)

    def write_as(self, account: Account, name: str, text: str, mode: int = 0o644) -> str:
        path = self.write(name, text, mode)
        os.chown(path, account.uid, account.gid)
        return path

    def forward(self) -> str:
        return os.path.join(self.boss.home, ".forward")


class ForwardRightsTests(RightsCase):
    def test_swapped_for_symlink(self) -> None:
        """A .forward replaced by a symlink to a root-only file between any check and the
        open is not read through the link."""
        self.write_as(self.boss, "home/boss/.forward", "alice\n")
        root_list = self.write("root-list", "x@remote.test\n", 0o600)
        real_open, swapped = os.open, []

        def racing_open(path: str, *args: object, **kwargs: object) -> int:
            if str(path).endswith(".forward") and not swapped:
                swapped.append(path)
                os.unlink(self.forward())
                os.symlink(root_list, self.forward())
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", racing_open)
        self.assertEqual(self.expand("", "boss"), [self.boss])
        self.assertTrue(swapped)

    def test_hard_link_to_root_file(self) -> None:
        """A hard link to a file of root's (where protected_hardlinks is off) is not read."""
        root_list = self.write("root-list", "x@remote.test\n", 0o644)
        os.link(root_list, self.forward())
        self.assertEqual(self.expand("", "boss"), [self.boss])

    def test_root_owned_must_be_readable_by_user(self) -> None:
        """A root-owned .forward is read only if boss could read it (0644), not when 0600."""
        self.write("home/boss/.forward", "alice\n", 0o600)
        self.assertEqual(self.expand("", "boss"), [self.boss])
        os.chmod(self.forward(), 0o644)
        self.assertEqual(self.expand("", "boss"), [self.alice])

    def test_owned_by_another_user(self) -> None:
        """A .forward of alice's in boss's home is ignored."""
        self.write_as(self.alice, "home/boss/.forward", "x@remote.test\n")
        self.assertEqual(self.expand("", "boss"), [self.boss])

    def test_fifo_does_not_hang(self) -> None:
        """A FIFO as .forward is ignored at once."""
        os.mkfifo(self.forward())
        self.assertEqual(self.expand("", "boss"), [self.boss])


class IncludeRightsTests(RightsCase):
    def test_forward_include_read_as_user(self) -> None:
        """:include: in boss's .forward is opened as boss: a root-only file is refused and its
        content shown nowhere; a readable list (even through a symlink) works."""
        self.write_as(self.boss, "home/boss/.forward", f":include:{self.secret}\n")
        e = self.assertRaises(Refused, self.expand, "", "boss")
        self.assertEqual(e.code, 550)
        self.assertIn("Permission denied", e.resp)
        self.assertNotIn("topsecret", e.resp)
        listing = self.write("list", "alice\n", 0o644)
        os.symlink(listing, os.path.join(self.dir, "list-link"))
        self.write_as(self.boss, "home/boss/.forward", f":include:{self.dir}/list-link\n")
        self.assertEqual(self.expand("", "boss"), [self.alice])

    def test_root_alias_include_takes_owner_rights(self) -> None:
        """Named in a root-owned alias file, an include is read as root; what it includes
        is read with its owner's rights (alice cannot make root read root's files for her)."""
        staff = self.write("staff", "alice\n", 0o600)
        self.assertEqual(self.expand(f"l: :include:{staff}\n", "l"), [self.alice])
        pub = self.write_as(self.alice, "pub", f":include:{self.secret}\n")
        e = self.assertRaises(Refused, self.expand, f"l: :include:{pub}\n", "l")
        self.assertIn("Permission denied", e.resp)
        self.assertNotIn("topsecret", e.resp)

    def test_forward_include_keeps_user_rights(self) -> None:
        """An include of alice's named in boss's .forward does not give boss alice's rights
        for what it includes in turn."""
        private = self.write_as(self.alice, "private", "topsecret\n", 0o600)
        pub = self.write_as(self.alice, "pub", f":include:{private}\n")
        self.write_as(self.boss, "home/boss/.forward", f":include:{pub}\n")
        e = self.assertRaises(Refused, self.expand, "", "boss")
        self.assertIn("Permission denied", e.resp)
        self.assertNotIn("topsecret", e.resp)

    def test_open_as_time_limit(self) -> None:
        """An open that hangs as the user (a FIFO without writer, opened blocking; a dead NFS
        server) ends at the time limit with ETIMEDOUT, the child killed."""
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo, 0o644)
        privs = Privileges("boss", self.boss.uid, self.boss.gid, self.boss.home)
        e = self.assertRaises(OSError, asuser.open_as, fifo, os.O_RDONLY, privs, 0.3)
        self.assertEqual(e.errno, errno.ETIMEDOUT)
        fd = asuser.open_as(fifo, os.O_RDONLY | os.O_NONBLOCK, privs)
        os.close(fd)

    def test_world_writable_refused(self) -> None:
        """As Postfix: a world-writable :include: file is refused (5.3.5)."""
        listing = self.write("list", "alice\n", 0o666)
        e = self.assertRaises(Refused, self.expand, f"l: :include:{listing}\n", "l")
        self.assertIn("5.3.5", e.resp)
        self.assertIn("world writable", e.resp)


class ProgramTests(unittest.TestCase):
    def privs(self) -> Privileges:
        pw = pwd.getpwuid(os.getuid())
        return Privileges(pw.pw_name, pw.pw_uid, pw.pw_gid, os.path.abspath(self.mktemp()))

    def run_program(self, command: str, message: bytes = b"Subject: hi\n\nbody\n") -> str:
        program = Program(command, self.privs(), "test")
        env = forward.command_environment(program.privs, "joe@remote.test", "team@example.test",
                                          "Team@example.test")
        return forward.deliver_program(program, message, env, time_limit=20)

    def test_stdin_and_environment(self) -> None:
        """The message arrives on stdin; SENDER, RECIPIENT, LOCAL, DOMAIN, USER, HOME, PATH are
        set as local(8) sets them."""
        out = os.path.abspath(self.mktemp())
        status = self.run_program(
            f'{{ cat; echo "$SENDER|$RECIPIENT|$LOCAL|$DOMAIN|$USER|$PATH|$ORIGINAL_RECIPIENT";'
            f' }} > {out}')
        self.assertEqual(status, f'delivered to command: {{ cat; echo "$SENDER|$RECIPIENT|'
                         f'$LOCAL|$DOMAIN|$USER|$PATH|$ORIGINAL_RECIPIENT"; }} > {out}')
        with open(out) as f:
            text = f.read()
        user = pwd.getpwuid(os.getuid()).pw_name
        self.assertEqual(text, "Subject: hi\n\nbody\njoe@remote.test|team@example.test|team|"
                         f"example.test|{user}|/usr/bin:/bin|Team@example.test\n")

    def test_tempfail_defers(self) -> None:
        """Exit 75 (EX_TEMPFAIL) defers (4.3.0) with the command's output."""
        e = self.assertRaises(TargetFailed, self.run_program, "echo busy; exit 75")
        self.assertEqual((e.permanent, e.dsn), (False, "4.3.0"))
        self.assertIn("busy", e.text)

    def test_other_exit_bounces(self) -> None:
        """Any other non-zero exit bounces (5.3.0), naming the status."""
        e = self.assertRaises(TargetFailed, self.run_program, "exit 3")
        self.assertEqual((e.permanent, e.dsn), (True, "5.3.0"))
        self.assertIn("Command died with status 3", e.text)

    def test_runs_as_nobody(self) -> None:
        """When the server is root, the command runs as the target's privileges (nobody)."""
        if not ROOT:
            raise unittest.SkipTest("needs root to switch users")
        program = Program("echo $(id -u) $(id -G); exit 3",
                          Privileges("nobody", 65534, 65534, "/nonexistent"), "test")
        e = self.assertRaises(TargetFailed, forward.deliver_program, program, b"x\n",
                              {"PATH": "/usr/bin:/bin"}, time_limit=20)
        self.assertIn("Command output: 65534 65534", e.text)

    def test_envelope_copy(self) -> None:
        """A command reads a From_ line, Return-Path, X-Original-To, Delivered-To, message."""
        data = forward.envelope_copy(b"Subject: x\n\nFrom me\n", "a@b", "t@x", "boss@x", 0)
        lines = data.split(b"\n")
        self.assertTrue(lines[0].startswith(b"From a@b  "))
        self.assertEqual(lines[1:4], [b"Return-Path: <a@b>", b"X-Original-To: t@x",
                                      b"Delivered-To: boss@x"])
        self.assertIn(b"\nFrom me\n", data)


class AppendLockTests(unittest.TestCase):
    """The /file appender's locks (its dotlock, the store's fcntl lock), in-process here."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.sleeps: list[float] = []
        self.patch(asuser.time, "sleep", self.sleeps.append)

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_waits_for_a_store_lock(self) -> None:
        """While the store holds the mailbox (dotlock and fcntl lock), nothing is appended."""
        with open(self.path, "wb"):
            pass
        opener = lambda: os.open(self.path, os.O_RDWR)  # noqa: E731
        with locking.locked_mailbox(self.path, opener):
            self.assertEqual(asuser._append(self.path, b"x\n"),
                             (asuser.EX_TEMPFAIL, "file is locked (dotlock)"))
        self.assertEqual(len(self.sleeps), 300)
        self.assertEqual(asuser._append(self.path, b"x\n"), (0, ""))
        self.assertEqual(self.read(), b"x\n")
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_fcntl_lock_of_another_holder(self) -> None:
        with open(self.path, "wb"):
            pass
        fd = os.open(self.path, os.O_RDWR)
        self.addCleanup(os.close, fd)
        self.assertTrue(locking.try_fcntl_lock(fd))
        self.assertEqual(asuser._append(self.path, b"x\n"),
                         (asuser.EX_TEMPFAIL, "file is locked (fcntl)"))
        self.assertFalse(os.path.exists(self.path + ".lock"))  # the dotlock was given back
        self.assertEqual(self.read(), b"")

    def test_stale_dotlock_broken(self) -> None:
        with open(self.path + ".lock", "wb"):
            pass
        old = asuser.time.time() - asuser.STALE_DOTLOCK - 10
        os.utime(self.path + ".lock", (old, old))
        self.assertEqual(asuser._append(self.path, b"x\n"), (0, ""))
        self.assertEqual((self.read(), self.sleeps), (b"x\n", [0.1]))  # one pause, then taken
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_no_dotlock_where_the_directory_refuses_one(self) -> None:
        """Postfix's "may fail": without a dotlock the fcntl lock alone guards the append."""
        real_open = os.open

        def refused(path: str, flags: int, *args: object, **kw: object) -> int:
            if path.endswith(".lock"):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

        self.patch(asuser.os, "open", refused)
        self.assertEqual(asuser._append(self.path, b"x\n"), (0, ""))
        self.assertEqual(self.read(), b"x\n")


class FileTests(unittest.TestCase):
    def target(self, path: str, uid: int | None = None) -> File:
        pw = pwd.getpwuid(os.getuid() if uid is None else uid)
        return File(path, Privileges(pw.pw_name, pw.pw_uid, pw.pw_gid, "/"), "test")

    def test_appends_mbox(self) -> None:
        """Two deliveries append two mbox entries (From_ line, >From quoting, blank line after),
        a new file is mode 0600."""
        path = os.path.abspath(self.mktemp())
        for n in (1, 2):
            entry = forward.mbox_entry(f"Subject: {n}\n\nFrom x\n".encode(), "a@b", "t", "t", 0)
            self.assertEqual(forward.deliver_file(self.target(path), entry),
                             f"delivered to file: {path}")
        with open(path, "rb") as f:
            text = f.read()
        self.assertEqual(text.count(b"\nFrom a@b  "), 1)
        self.assertTrue(text.startswith(b"From a@b  "))
        self.assertEqual(text.count(b"\n>From x\n\n"), 2)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_symlink_refused(self) -> None:
        """A symlink target is refused permanently (5.2.0), nothing written through it."""
        path = os.path.abspath(self.mktemp())
        real = path + ".real"
        open(real, "w").close()
        os.symlink(real, path)
        e = self.assertRaises(TargetFailed, forward.deliver_file, self.target(path), b"x\n")
        self.assertEqual((e.permanent, e.dsn), (True, "5.2.0"))
        self.assertEqual(os.path.getsize(real), 0)

    def test_privileges_apply(self) -> None:
        """As nobody, a root-only directory cannot be written: the delivery bounces."""
        if not ROOT:
            raise unittest.SkipTest("needs root to switch users")
        d = os.path.abspath(self.mktemp())
        os.makedirs(d, mode=0o700)
        e = self.assertRaises(TargetFailed, forward.deliver_file,
                              self.target(os.path.join(d, "f"), 65534), b"x\n")
        self.assertTrue(e.permanent)
        self.assertIn("Permission denied", e.text)
        self.assertFalse(os.path.exists(os.path.join(d, "f")))

    def test_no_interpreter_needed(self) -> None:
        """As nobody, where the server's Python is not reachable by nobody (a venv under a 0700
        directory, as one made from a Python under /root): the file is still appended, owned by
        nobody, and nobody keeps none of root's groups."""
        if not ROOT:
            raise unittest.SkipTest("needs root to switch users")
        private = tempfile.mkdtemp(prefix="ms-py-", dir="/tmp")
        self.addCleanup(shutil.rmtree, private, True)
        os.chmod(private, 0o700)
        python = os.path.join(private, "python3")
        os.symlink(os.path.realpath(sys.executable), python)
        self.patch(sys, "executable", python)
        out = tempfile.mkdtemp(prefix="ms-out-", dir="/tmp")
        self.addCleanup(shutil.rmtree, out, True)
        os.chmod(out, 0o777)
        path = os.path.join(out, "file.mbox")
        entry = forward.mbox_entry(b"Subject: s\n\nfiled\n", "a@b", "t", "t", 0)
        self.assertEqual(forward.deliver_file(self.target(path, 65534), entry),
                         f"delivered to file: {path}")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), entry)
        self.assertEqual(os.stat(path).st_uid, 65534)
        group_only = os.path.join(out, "group-only")
        os.makedirs(group_only)
        os.chown(group_only, 0, 0)
        os.chmod(group_only, 0o770)  # root's group may write here; nobody may not
        e = self.assertRaises(TargetFailed, forward.deliver_file,
                              self.target(os.path.join(group_only, "f"), 65534), b"x\n")
        self.assertIn("Permission denied", e.text)
