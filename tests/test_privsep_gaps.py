"""Privilege separation's remaining gaps (issue 11 item 1): root's own ~/.forward run as
default_privs, :include: inside :include:, hung agents, process titles and standard I/O."""

from __future__ import annotations

import os
import pwd
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.mta import forward
from mailsuite.mta.aliases import AliasMap
from mailsuite.mta.asuser import Privileges
from mailsuite.privsep import agent, login, netproc, wire
from tests.fakes import FakeAccounts
from tests.test_privsep import Master, result

ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody").pw_uid


def write(path: str, text: str, mode: int = 0o644) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class RootForwardTests(unittest.TestCase):
    """Postfix runs the commands and files of root's ~/.forward as default_privs."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.root = Account("root", 0, 0, os.path.join(self.dir, "root"))
        self.forward = write(os.path.join(self.root.home, ".forward"),
                             '"|/bin/cat", /tmp/root.copy\n', 0o600)

    def expander(self, default_privs: str = forward.DEFAULT_PRIVS) -> forward.Expander:
        amap = AliasMap([write(os.path.join(self.dir, "aliases"), "")], ["example.test"])
        items = [forward.Target("|/bin/cat", self.forward, 1),
                 forward.Target("/tmp/root.copy", self.forward, 1)]
        e = forward.Expander(amap, FakeAccounts(self.root), "example.test", ["example.test"],
                             default_privs)
        e.forward_reader = lambda account: items if account.uid == 0 else []
        return e

    def test_root_forward_runs_as_default_privs(self) -> None:
        out = self.expander().expand("root")
        self.assertEqual([(type(d).__name__, d.privs.uid) for d in out],  # type: ignore[union-attr]
                         [("Program", NOBODY), ("File", NOBODY)])

    def test_default_privs_is_a_setting(self) -> None:
        daemon = pwd.getpwnam("daemon").pw_uid
        out = self.expander("daemon").expand("root")
        self.assertEqual({d.privs.uid for d in out}, {daemon})  # type: ignore[union-attr]

    def test_key_and_its_default(self) -> None:
        from mailsuite.config import parse_config
        cfg = parse_config("", "mail.ini", hostname=lambda: "mx.example.test")
        self.assertEqual(cfg.mail.default_privs, "nobody")
        cfg = parse_config("[mail]\ndefault_privs = daemon\n", "mail.ini",
                           hostname=lambda: "mx.example.test")
        self.assertEqual(cfg.mail.default_privs, "daemon")

    def test_network_process_sends_it_to_the_default_privs_agent(self) -> None:
        """RemoteSpecial: a command of root's ~/.forward (with nobody's rights) goes to the
        agent of OpenPrivs(nobody), not deferred."""
        asked: list[tuple[str, int | None]] = []

        class Store:
            def _channel(self, name: str, uid: int | None = None) -> defer.Deferred[Any]:
                asked.append((name, uid))
                return defer.Deferred()  # (never answers: only the routing is looked at)

        nobody = Privileges("nobody", NOBODY, NOBODY, "/nonexistent")
        dest = forward.Program("/bin/cat", nobody, f"{self.forward}")
        d = netproc.RemoteSpecial(Store())(dest, b"x\n", "a@b", "root", "root", 0.0)  # type: ignore[arg-type]
        self.assertEqual(asked, [(f"uid:{NOBODY}", NOBODY)])
        self.assertFalse(d.called)

    def test_agent_checks_with_the_master(self) -> None:
        """The default_privs agent runs a target of root's ~/.forward only if the master's
        reading of that file (RootForward) lists it."""
        answers = {"path": self.forward, "items": ["|/bin/cat", "/tmp/root.copy"]}

        class Link:
            def callRemote(self, command: Any, **kw: Any) -> defer.Deferred[Any]:
                assert command is wire.RootForward
                return defer.succeed(answers)

        fake = type("A", (), {"master": Link(), "privs": True})()
        channel = agent.DeliveryChannel(fake)  # type: ignore[arg-type]
        self.assertIsNone(result(channel._in_root_forward(self.forward, "program", "/bin/cat")))
        self.assertIsNone(result(channel._in_root_forward(self.forward, "file",
                                                          "/tmp/root.copy")))
        refused = result(channel._in_root_forward(self.forward, "program", "/bin/sh -c id"))
        self.assertIsInstance(refused.value, forward.TargetFailed)
        refused = result(channel._in_root_forward("/elsewhere/.forward", "program", "/bin/cat"))
        self.assertIsInstance(refused.value, forward.TargetFailed)

    def test_master_answers_the_default_privs_agent_only(self) -> None:
        master = Master(Clock())
        master.cfg = type("C", (), {"mail": type("M", (), {"default_privs": "nobody"})()})()
        master.accounts = FakeAccounts(self.root)
        other = type("Ch", (), {"privs": True, "uid": 4242})()
        self.assertRaises(wire.Refused, master.root_forward, other)
        user = type("Ch", (), {"privs": False, "uid": NOBODY})()
        self.assertRaises(wire.Refused, master.root_forward, user)


class NestedIncludeTests(unittest.TestCase):
    """An :include: inside an :include: (Postfix allows it), bounded, loops stopped."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        uid, gid = os.getuid(), os.getgid()
        self.boss = Account("boss", uid, gid, os.path.join(self.dir, "boss"))
        self.carol = Account("carol", uid, gid, os.path.join(self.dir, "carol"))
        os.makedirs(self.boss.home)
        os.makedirs(self.carol.home)
        self.reads: list[tuple[str, tuple[str, ...]]] = []

    def expander(self, forward_text: str) -> forward.Expander:
        amap = AliasMap([write(os.path.join(self.dir, "aliases"), "")], ["example.test"])
        path = write(os.path.join(self.boss.home, ".forward"), forward_text, 0o600)
        e = forward.Expander(amap, FakeAccounts(self.boss, self.carol), "example.test",
                             ["example.test"])
        e.forward_reader = lambda a: (forward.parse_list(forward_text, path)
                                      if a.name == "boss" else [])

        def reader(p: str, privs: Any, via: tuple[str, ...]) -> tuple[int, int, str]:
            self.reads.append((p, via))
            return forward.read_include_file(p, privs)

        e.include_reader = reader
        return e

    def chain(self, n: int) -> list[str]:
        """``n`` include files, each naming the next; the last lists carol."""
        paths = [os.path.join(self.boss.home, f"list{i}") for i in range(n)]
        for i, path in enumerate(paths):
            write(path, f":include:{paths[i + 1]}\n" if i + 1 < n else "carol\n")
        return paths

    def test_nested_read_with_the_chain(self) -> None:
        a, b = self.chain(2)
        out = self.expander(f":include:{a}\n").expand("boss")
        self.assertEqual(out, [self.carol])
        forward_path = os.path.join(self.boss.home, ".forward")
        self.assertEqual(self.reads, [(a, (forward_path,)), (b, (forward_path, a))])

    def test_depth_limit(self) -> None:
        paths = self.chain(forward.MAX_INCLUDE_DEPTH + 1)
        with self.assertRaises(forward.Refused) as caught:
            self.expander(f":include:{paths[0]}\n").expand("boss")
        self.assertIn("5.4.6", str(caught.exception))
        paths = self.chain(forward.MAX_INCLUDE_DEPTH)
        self.assertEqual(self.expander(f":include:{paths[0]}\n").expand("boss"), [self.carol])

    def test_loop_adds_nothing(self) -> None:
        a = os.path.join(self.boss.home, "a")
        b = os.path.join(self.boss.home, "b")
        write(a, f":include:{b}\ncarol\n")
        write(b, f":include:{a}\n")
        self.assertEqual(self.expander(f":include:{a}\n").expand("boss"), [self.carol])


class AgentIncludeVettingTests(unittest.TestCase):
    """The agent reads a nested :include: only along a chain it checks itself."""

    def setUp(self) -> None:
        home = os.path.abspath(self.mktemp())
        self.a, self.b, self.secret = (os.path.join(home, n) for n in ("a", "b", "secret"))
        self.fwd = write(os.path.join(home, ".forward"), f":include:{self.a}\n")
        write(self.a, f":include:{self.b}\n")
        write(self.b, "carol\n")
        write(self.secret, "do not read\n")
        me = Account("me", os.getuid(), os.getgid(), home)
        self.fake = type("A", (), {"privs": False, "account": me})()

    def read(self, path: str, *via: str) -> Any:
        return agent._read_include(self.fake, path, 0, via)  # type: ignore[arg-type]

    def test_nested_along_the_chain(self) -> None:
        self.assertEqual(self.read(self.b, self.fwd, self.a)["text"], "carol\n")

    def test_not_named_by_the_last(self) -> None:
        self.assertRaises(wire.Refused, self.read, self.secret, self.fwd, self.a)
        self.assertRaises(wire.Refused, self.read, self.b, self.fwd)  # .forward names a only
        self.assertRaises(wire.Refused, self.read, self.b)  # no chain at all

    def test_loop_and_depth(self) -> None:
        write(self.b, f":include:{self.a}\n")
        self.assertRaises(wire.Refused, self.read, self.a, self.fwd, self.a, self.b)
        deep = (self.fwd, *[self.a] * forward.MAX_INCLUDE_DEPTH)
        self.assertRaises(wire.Refused, self.read, self.b, *deep)

    def test_top_include_must_be_ours(self) -> None:
        """A chain that starts at an :include: file (its owner's rights, named from a
        root-owned alias file) is read only by the agent of that owner."""
        self.assertEqual(self.read(self.b, self.a)["text"], "carol\n")
        if ROOT:
            os.chown(self.a, 4242, 4242)
            self.assertRaises(wire.Refused, self.read, self.b, self.a)


def connected(clock: Clock, on_timeout: Any = None) -> Any:
    """A Channel on a StringTransport (nothing ever answers), with ``clock`` as reactor."""
    from twisted.internet.testing import StringTransport

    from mailsuite.privsep.common import Channel
    class Transport(StringTransport):
        def sendFileDescriptor(self, fd: int) -> None:
            pass

    channel = Channel(reactor=clock, on_timeout=on_timeout)
    channel.makeConnection(Transport())
    return channel


def sleeper() -> tuple[Any, int]:
    """A real process to kill, and a pidfd of it."""
    import subprocess
    proc = subprocess.Popen(["sleep", "60"])
    return proc, os.pidfd_open(proc.pid)


class HungProcessTests(unittest.TestCase):
    """Every call between the processes is bounded; a child that does not answer in time is
    killed (SIGKILL through its pidfd) and forgotten."""

    def test_unanswered_call_times_out(self) -> None:
        clock, late = Clock(), []
        channel = connected(clock, late.append)
        d = channel.callRemote(wire.OpenDelivery, user="u")
        clock.advance(wire.CALL_TIMEOUT - 1)
        self.assertFalse(d.called)
        clock.advance(2)
        self.assertIsInstance(result(d).value, defer.TimeoutError)
        self.assertEqual(late, [channel])

    def test_master_gives_up_on_attach_before_the_network_process(self) -> None:
        """A login's check waits for the password check and the agent's Attach: the master
        kills a hung agent first, and the whole wait is bounded."""
        self.assertLess(wire.timeout_of(wire.Attach), wire.timeout_of(wire.CheckPassword))
        self.assertGreaterEqual(wire.timeout_of(wire.CheckPassword),
                                wire.CALL_TIMEOUT + wire.timeout_of(wire.Attach))
        self.assertLessEqual(wire.timeout_of(wire.CheckPassword), 60.0)

    def test_hung_agent_killed_and_forgotten(self) -> None:
        from tests.test_privsep import BOSS
        clock = Clock()
        master = Master(clock)
        channel = connected(clock, master.kill)
        proc, channel.pidfd = sleeper()
        self.addCleanup(proc.kill)
        master.agents["boss"] = channel
        d = master.open_agent(BOSS, "imap")
        clock.advance(wire.timeout_of(wire.Attach) + 1)
        self.assertIsInstance(result(d).value, wire.Refused)
        self.assertEqual(proc.wait(5), -9)
        self.assertNotIn("boss", master.agents)
        self.assertTrue(channel.transport.disconnecting)

    def test_full_agent_set_aside_for_a_new_one(self) -> None:
        """An agent at default_client_limit answers Full: the master starts another for
        the account and attaches the stream there; the full one keeps its streams."""
        from tests.test_privsep import BOSS
        master = Master(Clock())
        master.net = object()  # type: ignore[assignment]
        full, fresh = (type("Ch", (), {})() for _ in range(2))
        full.callRemote = lambda command, **kw: defer.fail(wire.Full("full"))
        fresh.callRemote = lambda command, **kw: defer.succeed({})
        made = iter([full, fresh])
        master.agent_for = lambda account, privs=False: defer.succeed(  # type: ignore[method-assign]
            master.agents.setdefault(account.name, next(made)))
        answer = result(master.open_agent(BOSS, "imap"))
        self.addCleanup(os.close, answer["fd"])
        self.assertIs(master.agents["boss"], fresh)
        self.assertEqual(master.aside, {full})

    def test_agent_refuses_over_default_client_limit(self) -> None:
        from tests.configs import real_config
        from tests.test_privsep import BOSS
        cfg = real_config(mail={"default_client_limit": 2})
        a = agent.Agent(Clock(), cfg, BOSS, None)
        a.attached = 2
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        self.assertRaises(wire.Full, a.attach, "imap", r, {})
        self.assertRaises(OSError, os.fstat, r)  # closed
        self.assertEqual(a.attached, 2)

    def test_password_check_unanswered_is_temporary(self) -> None:
        master = type("M", (), {"callRemote": lambda self, *a, **kw: defer.fail(
            defer.TimeoutError())})()
        checker = login.RemoteChecker(master)
        creds = type("C", (), {"username": b"boss", "password": b"secret"})()
        self.assertIsInstance(result(checker.requestAvatarId(creds)).value,
                              login.AuthUnavailable)

    def test_zygote_answers_with_a_pidfd(self) -> None:
        import socket

        from mailsuite.privsep import zygote
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        proc, mine = sleeper()
        os.close(mine)
        self.addCleanup(proc.kill)
        zygote._answer(theirs, proc.pid)  # (queued before the request: no fork here)
        pidfd = zygote.send(ours, zygote.Spawn("agent", 1, 1, [1]), [])
        self.addCleanup(os.close, pidfd)
        import signal
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        self.assertEqual(proc.wait(5), -9)
