"""Privilege separation's remaining gaps through the real server (issue 11 item 1): root's
~/.forward and root-owned alias commands as default_privs, nested :include: files, hung
agents, the children's standard I/O and their process titles."""

from __future__ import annotations

import os
import pwd

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_end_to_end import Clients, message
from tests.integration.test_privsep import SKIP, descendants, wait_until


def output_dir(site: Site) -> str:
    """A directory any user may write to (commands run as nobody, daemon, ...)."""
    path = os.path.join(site.dir, "out")
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o1777)
    return path


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def chown(path: str, uid: int) -> None:
    os.chown(path, uid, uid)


class DefaultPrivsTests(unittest.TestCase):
    skip = SKIP

    def test_root_forward_command_runs_as_default_privs(self) -> None:
        """root's own ~/.forward names a command: it runs as nobody (it was deferred)."""
        site = Site(self)
        home = os.path.join(site.dir, "home", "root")
        os.makedirs(home, mode=0o700)
        with open(os.path.join(site.dir, "passwd")) as f:
            passwd = f.read().replace(":/root:", f":{home}:")
        site._write("passwd", passwd)
        out = os.path.join(output_dir(site), "root-cmd")
        with open(os.path.join(home, ".forward"), "w") as f:
            f.write(f'"|/bin/sh -c \'cat > {out}.tmp; id -u >> {out}.tmp; mv {out}.tmp {out}\'"\n')
        site.start()
        Clients(site).send(message("for root", "run by nobody"), ["root@example.test"])
        wait_until(lambda: read(out), "the command's output")
        text = read(out)
        self.assertIn("run by nobody", text)
        self.assertEqual(text.split()[-1], str(pwd.getpwnam("nobody").pw_uid))
        assert site.process is not None
        self.assertIn("mailsuite: privs nobody", cmdlines(site.process.pid).values())

    def test_root_owned_alias_command_as_the_configured_default_privs(self) -> None:
        site = Site(self, aliases="", mail_extra="default_privs = daemon")
        out = os.path.join(output_dir(site), "alias-cmd")
        site._write("aliases", f'cmd: "|/bin/sh -c \'id -u > {out}.tmp; mv {out}.tmp {out}\'"\n')
        site.start()
        Clients(site).send(message("for the alias", "body"), ["cmd@example.test"])
        wait_until(lambda: read(out), "the command's output")
        self.assertEqual(read(out).strip(), str(pwd.getpwnam("daemon").pw_uid))


class NestedIncludeTests(unittest.TestCase):
    skip = SKIP

    def test_include_inside_include_in_a_closed_home(self) -> None:
        """boss's .forward names list a, which names list b (all in his 0700 home): his agent
        reads both (the second used to be refused, 550)."""
        site = Site(self)
        site.start()
        home = site.home("boss")
        a, b = os.path.join(home, "a"), os.path.join(home, "b")
        for path, text in ((os.path.join(home, ".forward"), f":include:{a}\n"),
                           (a, f":include:{b}\n"), (b, "carol\n")):
            with open(path, "w") as f:
                f.write(text)
            chown(path, site.uids["boss"])
        os.chmod(home, 0o700)
        Clients(site).send(message("nested", "for the members"), ["boss@example.test"])
        wait_until(lambda: os.path.exists(site.inbox("carol")), "the member's copy")
        self.assertIn("for the members", read(site.inbox("carol")))
        self.assertFalse(os.path.exists(site.inbox("boss")))


def cmdlines(root: int) -> dict[int, str]:
    out = {}
    for pid in descendants(root):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out[pid] = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return out


class ChildrenTests(unittest.TestCase):
    """What every process but the master shows and holds."""

    skip = SKIP

    def setUp(self) -> None:
        self.site = Site(self)
        self.site.start()
        self.c = Clients(self.site)
        self.m = self.c.imap()
        self.addCleanup(self.m.logout)
        self.c.send(message("hello", "body"), ["carol@example.test"])
        wait_until(lambda: os.path.exists(self.site.inbox("carol")), "carol's delivery")
        assert self.site.process is not None
        self.master = self.site.process.pid

    def test_process_titles(self) -> None:
        titles = sorted(cmdlines(self.master).values())
        self.assertEqual(titles, ["mailsuite: agent boss", "mailsuite: agent carol",
                                  "mailsuite: network", "mailsuite: zygote"])

    def test_no_child_holds_the_masters_output_or_a_terminal(self) -> None:
        """The children's standard I/O is /dev/null and a pipe to the master, never the
        master's own output (a terminal under twistd -n); none has a controlling terminal."""
        mine = {os.readlink(f"/proc/{self.master}/fd/{fd}") for fd in (1, 2)}
        children = descendants(self.master)
        self.assertGreaterEqual(len(children), 4)
        for pid in children:
            held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            self.assertFalse(held & mine, f"{pid} holds {held & mine}")
            self.assertEqual(os.readlink(f"/proc/{pid}/fd/0"), os.devnull)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            self.assertEqual(int(fields[4]), 0, "a controlling terminal")  # tty_nr
            self.assertNotEqual(int(fields[3]), os.getsid(self.master))

    def test_children_log_to_the_twistd_log(self) -> None:
        """What the network process and the agents log reaches the master's log, named."""
        wait_until(lambda: "network [" in self.site.log()
                   and "agent carol [" in self.site.log(), "the children's lines")
        self.assertIn("network [-] SMTPFactory starting on", self.site.log())


class HungAgentTests(unittest.TestCase):
    skip = SKIP

    def test_hung_agent_killed_and_the_next_login_served(self) -> None:
        """boss's agent stops answering (SIGSTOP): his next login gets a temporary error
        within the Attach timeout (it waited forever), the agent is killed, and the login
        after that is served by a new agent."""
        import imaplib
        import signal
        import time

        from mailsuite.privsep import wire
        from tests.integration.harness import alive
        site = Site(self)
        site.start()
        c = Clients(site)
        m = c.imap()
        m.select("INBOX")
        assert site.process is not None
        hung, = (pid for pid, title in cmdlines(site.process.pid).items()
                 if title == "mailsuite: agent boss")
        os.kill(hung, signal.SIGSTOP)
        self.addCleanup(lambda: alive(hung) and os.kill(hung, signal.SIGKILL))
        began = time.monotonic()
        client = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=60)
        with self.assertRaises(imaplib.IMAP4.error) as caught:
            client.login("boss", "secret")
        self.assertLess(time.monotonic() - began, wire.timeout_of(wire.Attach) + 5)
        self.assertIn("UNAVAILABLE", str(caught.exception))
        wait_until(lambda: not alive(hung), "the hung agent killed")
        m = c.imap()
        self.assertEqual(m.select("INBOX")[0], "OK")
        m.logout()

    def test_full_agent_gets_a_sibling(self) -> None:
        """default_client_limit = 1: boss's second session is served by a second agent."""
        site = Site(self, mail_extra="default_client_limit = 1")
        site.start()
        c = Clients(site)
        sessions = [c.imap() for _ in range(2)]
        for m in sessions:
            self.assertEqual(m.select("INBOX")[0], "OK")
        assert site.process is not None
        titles = list(cmdlines(site.process.pid).values())
        self.assertEqual(titles.count("mailsuite: agent boss"), 2)
        for m in sessions:
            self.assertEqual(m.noop()[0], "OK")
            m.logout()
