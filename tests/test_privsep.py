"""The master's narrow interface (privsep.master) and the network side's use of it, with
fakes: what a network process can and cannot obtain from the master."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.privsep import login, netproc, wire, zygote
from mailsuite.privsep.master import MasterService

BOSS = Account("boss", 2000, 2000, "/home/boss")
#: the fields of an IMAP login (wire.CheckPassword's tag...)
IMAP = {"tag": b"a1", "method": "PLAIN", "secure": False, "lip": "127.0.0.1"}


class FakeChecker:
    def __init__(self) -> None:
        self.broken = False

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        if self.broken:
            return defer.fail(OSError("shadow unreadable"))
        if credentials.username == b"boss" and credentials.password == b"secret":
            return defer.succeed(b"boss")
        return defer.fail(UnauthorizedLogin("no"))


class Master(MasterService):
    """MasterService with the agent side recorded instead of spawned."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(None, clock, FakeChecker(), None, None, {}, None, (999, 999))
        self.streams: list[tuple[str, str, dict[str, Any]]] = []

    def open_stream(self, name: str, role: str, **fields: Any) -> Any:
        self.streams.append((name, role, fields))
        return defer.succeed({"fd": -1})


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


class MasterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.master = Master(self.clock)

    def test_verdicts(self) -> None:
        """ok with the account's name, fail, temp (the checker broke); no session without
        a login's fields (an SMTP AUTH)."""
        ok = result(self.master.check_password("boss", b"secret", "smtp"))
        self.assertEqual(ok, {"verdict": "ok", "name": "boss"})
        bad = result(self.master.check_password("boss", b"guess", "imap", session=IMAP))
        self.assertEqual(bad, {"verdict": "fail", "name": ""})
        self.master.checker.broken = True
        temp = result(self.master.check_password("boss", b"secret"))
        self.assertEqual(temp["verdict"], "temp")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.master.streams, [])
        self.assertEqual(self.master.sessions, {})

    def test_right_password_opens_the_session(self) -> None:
        """An IMAP or POP3 login's right password opens its session in the same answer: a
        stream to an agent of the account the check found, named for what follows."""
        answer = result(self.master.check_password("boss", b"secret", "imap", "192.0.2.7",
                                                   session=IMAP))
        session = answer["session"]
        self.assertEqual(len(session), 18)
        self.assertEqual((answer["verdict"], answer["name"], answer["fd"]), ("ok", "boss", -1))
        self.assertEqual(self.master.streams, [("boss", "imap", {**IMAP, "rip": "192.0.2.7",
                                                                 "session": session})])
        self.assertEqual(self.master.sessions, {session: "boss"})

    def test_a_session_not_opened_is_temp(self) -> None:
        """An agent that cannot take the session (spawn failed, full): ``temp``, logged, and
        the session's name is forgotten."""
        self.master.open_stream = lambda *a, **kw: defer.fail(wire.Refused("no agent"))
        answer = result(self.master.check_password("boss", b"secret", "pop3", session=IMAP))
        self.assertEqual(answer, {"verdict": "temp", "name": ""})
        self.assertEqual(len(self.flushLoggedErrors(wire.Refused)), 1)
        self.assertEqual(self.master.sessions, {})

    def test_sessions_are_bound_to_their_account(self) -> None:
        """Only an agent of the account a session was opened for may hibernate it, and a
        forgotten session cannot be thawed (its name opens nothing any more)."""
        session = result(self.master.open_session("boss", "imap", tag=b"a1"))["session"]
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]
        self.assertRaises(wire.Refused, self.master.hibernate, "carol", session, *fds, 0)
        self.assertRaises(OSError, os.fstat, fds[0])  # closed: not passed on
        self.master.forget(session)
        state = os.open("/dev/null", os.O_RDONLY)
        self.assertRaises(wire.Refused, self.master.thaw, session, state)
        self.assertRaises(OSError, os.fstat, state)
        self.assertEqual(self.master.sessions, {})

    def test_sessions_end_with_the_network_process(self) -> None:
        """A network process that ends takes its clients with it: their sessions' names open
        nothing in the one started next."""
        session = result(self.master.open_session("boss", "imap", tag=b"a1"))["session"]
        self.master.net_lost(None)
        state = os.open("/dev/null", os.O_RDONLY)
        self.assertRaises(wire.Refused, self.master.thaw, session, state)

    def test_session_roles_only(self) -> None:
        """A password check opens an IMAP or POP3 session, nothing else (no delivery, no
        other role), whatever the network process asks."""
        self.assertRaises(wire.Refused, self.master.open_session, "boss", "delivery")
        answer = result(self.master.check_password("boss", b"secret", "agent", session=IMAP))
        self.assertEqual(answer["verdict"], "temp")
        self.flushLoggedErrors(wire.Refused)
        self.assertEqual(self.master.streams, [])

    def test_dropped_names(self) -> None:
        for name in ("", "../x", ".tmp.ABC", "a/b"):
            self.assertRaises(wire.Refused, self.master.open_dropped, name)


class FakeMaster:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls: list[Any] = []

    def callRemote(self, command: Any, **kw: Any) -> defer.Deferred[Any]:
        self.calls.append((command, kw))
        return defer.succeed(self.answers.pop(0))


class Creds:
    def __init__(self, username: bytes, password: bytes) -> None:
        self.username, self.password = username, password


class RemoteCheckerTests(unittest.TestCase):
    def test_ok_with_a_session_leaves_it_for_the_realm(self) -> None:
        """A login's fields go with the password; the session the master opened is taken
        once, by the realm."""
        master = FakeMaster([{"verdict": "ok", "name": "boss", "fd": 7, "session": b"S"}])
        checker = login.RemoteChecker(master)
        creds = Creds(b"boss", b"secret")
        creds.service, creds.client_ip = "imap", "192.0.2.7"
        creds.handoff = {"tag": b"a1", "method": "PLAIN", "secure": True, "rip": "x",
                         "lip": "127.0.0.1"}
        self.assertEqual(result(checker.requestAvatarId(creds)), b"boss")
        self.assertEqual(master.calls[0][1], {
            "user": "boss", "password": b"secret", "service": "imap", "rip": "192.0.2.7",
            "tag": b"a1", "method": "PLAIN", "secure": True, "lip": "127.0.0.1"})
        self.assertEqual(checker.take("boss"), login.Opened(7, b"S"))
        self.assertIsNone(checker.take("boss"))

    def test_no_session_fields_for_smtp(self) -> None:
        """An SMTP AUTH asks for the verdict only (its credentials carry no login fields)."""
        master = FakeMaster([{"verdict": "ok", "name": "boss"}])
        checker = login.RemoteChecker(master)
        creds = Creds(b"boss", b"secret")
        creds.service = "smtp"
        self.assertEqual(result(checker.requestAvatarId(creds)), b"boss")
        self.assertEqual(set(master.calls[0][1]), {"user", "password", "service", "rip"})
        self.assertIsNone(checker.take("boss"))

    def test_a_session_not_handed_over_is_let_go(self) -> None:
        """The avatar's logout (a limit refused the login): the agent's stream is closed and
        the master forgets the session's name."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        master = FakeMaster([{}])
        checker = login.RemoteChecker(master)
        handoff = login.Handoff(checker, None, login.Opened(w, b"S"), "imap", "boss", None)
        handoff.release()
        handoff.release()
        self.assertEqual(os.read(r, 1), b"")  # the write end is closed
        self.assertEqual(master.calls, [(wire.Forget, {"session": b"S"})])

    def test_fail_and_temp(self) -> None:
        master = FakeMaster([{"verdict": "fail", "name": ""},
                             {"verdict": "temp", "name": ""}])
        checker = login.RemoteChecker(master)
        failure = result(checker.requestAvatarId(Creds(b"boss", b"x")))
        self.assertTrue(failure.check(UnauthorizedLogin))
        failure = result(checker.requestAvatarId(Creds(b"boss", b"x")))
        self.assertTrue(failure.check(login.AuthUnavailable))


class SealedTests(unittest.TestCase):
    def test_messages_in_a_sealed_memfd(self) -> None:
        import fcntl
        fd = netproc._sealed([b"one\n", b"two\n"])
        self.addCleanup(os.close, fd)
        self.assertEqual(os.pread(fd, 100, 0), b"one\ntwo\n")
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        self.assertTrue(seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK)
        self.assertRaises(OSError, os.write, fd, b"x")


class ZygoteTests(unittest.TestCase):
    def test_close_others(self) -> None:
        """The child keeps exactly the descriptors it was given."""
        r, w = os.pipe()
        keep_r, keep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            zygote.close_others({keep_w})
            try:
                os.fstat(r)
                os.write(keep_w, b"open")
            except OSError:
                os.write(keep_w, b"closed")
            os._exit(0)
        os.close(keep_w)
        os.waitpid(pid, 0)
        self.assertEqual(os.read(keep_r, 10), b"closed")
        for fd in (r, w, keep_r):
            os.close(fd)


class VettingTests(unittest.TestCase):
    """An agent runs a command or file target only if the file it came from names it."""

    def test_alias_file(self) -> None:
        """A root-owned alias file's targets run as nobody only; another owner's as that
        owner only (Postfix's rights for them)."""
        import pwd

        from mailsuite.mta.forward import TargetFailed
        from mailsuite.privsep.agent import _in_alias_file
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('list: "|/usr/bin/list-post team", /var/archive/team\n')
        owner = os.getuid()
        rights = pwd.getpwnam("nobody").pw_uid if owner == 0 else owner
        _in_alias_file(path, rights, "program", "/usr/bin/list-post team")
        _in_alias_file(path, rights, "file", "/var/archive/team")
        self.assertRaises(TargetFailed, _in_alias_file, path, rights, "program", "/bin/sh -c id")
        self.assertRaises(TargetFailed, _in_alias_file, path, rights, "file", "/etc/passwd")
        if owner == 0:
            self.assertRaises(TargetFailed, _in_alias_file, path, 4242, "program",
                              "/usr/bin/list-post team")  # root's file: not 4242's rights
            os.chown(path, 4242, 4242)
            _in_alias_file(path, 4242, "program", "/usr/bin/list-post team")
            self.assertRaises(TargetFailed, _in_alias_file, path, rights, "program",
                              "/usr/bin/list-post team")  # 4242's file: not nobody's

    def test_open_privs_only_for_alias_rights(self) -> None:
        """OpenPrivs: nobody (default_privs) or an alias file's owner, never root or others."""
        import pwd
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x: y\n")
        cfg = type("C", (), {"mail": type("M", (), {"alias_maps": [path],
                                                    "default_privs": "nobody"})()})()
        master = Master(Clock())
        master.cfg = cfg
        opened: list[Any] = []
        master.open_agent = lambda account, role, privs=False, **kw: opened.append(  # type: ignore[method-assign]
            (account.uid, role, privs))
        nobody = pwd.getpwnam("nobody").pw_uid
        master.open_privs(nobody)
        self.assertEqual(opened, [(nobody, "delivery", True)])
        self.assertRaises(wire.Refused, master.open_privs, 0)
        self.assertRaises(wire.Refused, master.open_privs, 4321)
        if os.getuid() == 0:
            os.chown(path, 4321, 4321)
            master.open_privs(4321)
            self.assertEqual(opened[-1], (4321, "delivery", True))


class QueueOwnershipTests(unittest.TestCase):
    """The queue directory as the master leaves it for the network process (review findings:
    a mail_owner that owned the top level could swap maildrop/ or pid/ for links)."""

    skip = None if os.geteuid() == 0 else "chown needs root"

    def test_top_level_stays_root_working_dirs_are_mail_owner(self) -> None:
        from mailsuite.startup import QUEUE_SUBDIRS, give_queue
        top = self.mktemp()
        os.makedirs(os.path.join(top, "pid"))
        os.makedirs(os.path.join(top, "active"))
        victim = self.mktemp()
        with open(victim, "w") as f:
            f.write("root's\n")
        os.symlink(victim, os.path.join(top, "active", "link"))
        give_queue(top, (4242, 4242))
        st = os.stat(top)
        self.assertEqual((st.st_uid, st.st_mode & 0o7777), (0, 0o755))
        self.assertEqual(os.stat(os.path.join(top, "pid")).st_uid, 0)
        os.makedirs(os.path.join(top, "public"), exist_ok=True)
        os.chown(os.path.join(top, "public"), 4242, 4242)  # as an older start left it
        give_queue(top, (4242, 4242))
        self.assertEqual(os.lstat(os.path.join(top, "public")).st_uid, 0)
        for name, mode in QUEUE_SUBDIRS.items():
            st = os.lstat(os.path.join(top, name))
            self.assertEqual((st.st_uid, st.st_mode & 0o7777), (4242, mode), name)
        self.assertEqual(os.lstat(os.path.join(top, "active", "link")).st_uid, 4242)
        self.assertEqual(os.stat(victim).st_uid, 0)  # the link's target was not touched

    def test_open_dropped_follows_no_link(self) -> None:
        import shutil

        from mailsuite.startup import give_queue
        top = self.mktemp()
        os.makedirs(top)
        give_queue(top, (4242, 4242))
        master = Master(Clock())
        master.cfg = type("C", (), {"mail": type("M", (), {"queue_directory": top})()})()
        master.owner = (4242, 4242)
        master.net = None
        drop = os.path.join(top, "maildrop")
        with open(os.path.join(drop, "ABC123"), "w") as f:
            f.write("{}\n")
        os.link(os.path.join(drop, "ABC123"), os.path.join(drop, "HARD1"))
        self.assertRaises(wire.Refused, master.open_dropped, "HARD1")  # two links
        os.unlink(os.path.join(drop, "HARD1"))
        os.symlink("/etc/passwd", os.path.join(drop, "LINK1"))
        self.assertRaises(OSError, master.open_dropped, "LINK1")
        # over the channel: a file taken meanwhile stays FileNotFoundError (the pickup skips
        # it), a refusal is Refused; neither closes the channel
        from mailsuite.privsep.master import NetChannel
        channel = NetChannel(master)
        result(channel.open_dropped("GONE1")).trap(FileNotFoundError)
        result(channel.open_dropped("LINK1")).trap(wire.Refused)
        self.flushLoggedErrors()
        shutil.rmtree(drop)
        os.symlink("/etc", drop)  # (mail_owner cannot do this: the top level is root's)
        self.assertRaises(OSError, master.open_dropped, "passwd")


class SentDescriptorTests(unittest.TestCase):
    def test_closed_only_once_sent(self) -> None:
        """Our copy of an answered descriptor is closed when Twisted has sent it, not on a
        timer (a number closed early could be reused for something else before it leaves)."""
        clock = Clock()
        master = Master(clock)
        transport = type("T", (), {"connected": True, "_sendmsgQueue": []})()
        channel = type("Ch", (), {"transport": transport})()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        transport._sendmsgQueue.append(w)
        master.sent(channel, w)  # type: ignore[arg-type]
        clock.advance(60)
        os.fstat(w)  # still ours: not sent yet
        transport._sendmsgQueue.clear()
        clock.advance(1)
        self.assertRaises(OSError, os.fstat, w)


class ReadIncludeTests(unittest.TestCase):
    def test_only_what_the_forward_names(self) -> None:
        """An agent reads an :include: file only when its account's ~/.forward names it."""
        from mailsuite.privsep import agent
        home = self.mktemp()
        os.makedirs(home)
        listed, other = os.path.join(home, "list"), os.path.join(home, "secret")
        for path, text in ((listed, "carol\n"), (other, "do not read\n"),
                           (os.path.join(home, ".forward"), f":include:{listed}\n")):
            with open(path, "w") as f:
                f.write(text)
        me = Account("me", os.getuid(), os.getgid(), home)
        fake = type("A", (), {"privs": False, "account": me})()
        via = (os.path.join(home, ".forward"),)
        got = agent._read_include(fake, listed, 0, via)  # type: ignore[arg-type]
        self.assertEqual((got["errno"], got["text"], got["more"]), (0, "carol\n", False))
        self.assertRaises(wire.Refused, agent._read_include, fake, other, 0, via)


class AccountCacheTests(unittest.TestCase):
    def test_kept_for_the_auth_cache_ttl(self) -> None:
        """A known account is looked up once per auth_cache_ttl, not in a thread at every
        login (login and delivery look-ups apart)."""
        from types import SimpleNamespace

        clock = Clock()
        asked: list[tuple[str, str]] = []

        class Accounts:
            def lookup(self, name: str) -> Account:
                asked.append(("lookup", name))
                return BOSS

            def recipient(self, name: str) -> Account:
                asked.append(("recipient", name))
                return BOSS

        master = Master(clock)
        master.accounts = Accounts()
        master.cfg = SimpleNamespace(auth=SimpleNamespace(auth_cache_ttl=60.0))

        from mailsuite.privsep import master as master_module
        self.patch(master_module, "InPool", lambda reactor: lambda f, *a: defer.succeed(f(*a)))
        for _ in range(3):
            self.assertIs(self.successResultOf(master.account_of("boss")), BOSS)
        self.successResultOf(master.account_of("boss", delivery=True))
        self.assertEqual(asked, [("lookup", "boss"), ("recipient", "boss")])
        clock.advance(61)
        self.successResultOf(master.account_of("boss"))
        self.assertEqual(len(asked), 3)


class UnsentDescriptorTests(unittest.TestCase):
    def test_a_burst_of_logins_is_not_refused_for_descriptors_already_sent(self) -> None:
        """Our copies of descriptors answered are closed once sent; a burst of answers
        faster than the sweep's timer closes those already sent at once instead of refusing
        the next login (seen at 2,000 logins opened at once)."""
        from mailsuite.privsep import master as master_module

        class Transport:
            connected = True
            _sendmsgQueue: ClassVar[list[int]] = []

        class Chan:
            transport = Transport()

        m = Master(Clock())
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(master_module.MAX_UNSENT_FDS)]
        for fd in fds:
            m.sent(Chan(), fd)  # type: ignore[arg-type]
        last = os.open("/dev/null", os.O_RDONLY)
        m.sent(Chan(), last)  # type: ignore[arg-type]
        self.assertEqual([fd for _, fd in m._unsent], [last])
        self.assertRaises(OSError, os.fstat, fds[0])  # closed: it had been sent
        Transport._sendmsgQueue = [last]  # not sent yet: kept open
        m._close_sent()
        os.fstat(last)
        Transport._sendmsgQueue = []
        m._close_sent()
        self.assertRaises(OSError, os.fstat, last)
