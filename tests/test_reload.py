"""mailsuite.reload: what counts as changed, the keys that need a restart, and the swap of a
running one-process server's parts (tap.makeService on a memory reactor) at ``kill -HUP``."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from mailsuite import reload, tap
from mailsuite.config import ConfigError, parse_config
from tests.test_tap import write_config
from tests.test_tap_reactor import TestReactor, untouchable_global_reactor

FILE = "/etc/mailsuite/mail.ini"
BASE = "[mail]\nmyhostname = mail.example.test\n"
NO_IMPLICIT_TLS = "[listen]\nsmtps = no\npop3s = no\nimaps = no\n"


def parse(extra: str = "", tls: str = "") -> Any:
    return parse_config(BASE + extra + "[tls]\n" + tls, FILE)


class ChangedTests(unittest.TestCase):
    def test_changed_names_section_and_key(self) -> None:
        """Only the keys whose values differ are changed, named by section and key."""
        old, new = parse(), parse("mynetworks = 10.0.0.0/8\n[listen]\nimap = 1143\n")
        self.assertEqual(reload.changed(old, new), [  # ($mynetworks is the default of the other)
            ("mail", "mynetworks"), ("mail", "smtpd_client_event_limit_exceptions"),
            ("listen", "imap")])
        self.assertEqual(reload.changed(old, parse()), [])

    def test_restart_keys_keep_running_values(self) -> None:
        """queue_directory and mail_owner keep their running values (and are reported); the
        keys that change live take the file's."""
        old = parse()
        new = parse("queue_directory = /srv/queue\nmail_owner = other\nmynetworks = 10.0.0.0/8\n")
        merged, keys = reload.keep_restart_keys(old, new)
        self.assertEqual(sorted(keys), ["[mail] mail_owner", "[mail] queue_directory"])
        self.assertEqual(merged.mail.queue_directory, old.mail.queue_directory)
        self.assertEqual(merged.mail.mail_owner, old.mail.mail_owner)
        self.assertEqual(merged.mail.mynetworks, new.mail.mynetworks)

    def test_ssl_on_or_off_needs_restart_required_does_not(self) -> None:
        """ssl yes -> required is a policy (live); yes -> no removes the TLS context (restart)."""
        old = parse(NO_IMPLICIT_TLS)
        required = parse(NO_IMPLICIT_TLS, tls="ssl = required\n")
        self.assertEqual(reload.keep_restart_keys(old, required)[1], [])
        merged, keys = reload.keep_restart_keys(old, parse(NO_IMPLICIT_TLS, tls="ssl = no\n"))
        self.assertEqual((keys, merged.tls.ssl), (["[tls] ssl"], old.tls.ssl))

    def test_note_and_refusal_lines(self) -> None:
        """The maillog gets Dovecot's 'changed; needs a restart' and each error of a refusal."""
        lines: list[tuple[str, str]] = []

        class Log:
            def write(self, program: str, text: str) -> None:
                lines.append((program, text))

        reload.note_restart(Log(), FILE, ["[mail] queue_directory"])
        reload.refused(Log(), [f"{FILE}: [mail] mynetworks: bad"])
        self.assertEqual(lines, [
            ("master", f"warning: {FILE}: [mail] queue_directory: changed; needs a restart"),
            ("master", f"error: {FILE}: [mail] mynetworks: bad"),
            ("master", "warning: reload refused: the running configuration stays")])


LISTEN = "smtp = 2525\nsubmission = no\nsmtps = no\npop3 = 2110\npop3s = no\nimap = 2143\n" \
         "imaps = no\n"


class OneProcessReloadTests(unittest.TestCase):
    """tap.makeService on a memory reactor, mail.ini rewritten, Reloader.reread called."""

    def setUp(self) -> None:
        self.path = write_config(self, LISTEN)
        options = tap.Options()
        options.parseOptions(["--config", self.path])
        self.reactor = TestReactor()
        with untouchable_global_reactor():
            self.top = tap.makeService(options, reactor=self.reactor)
        self.addCleanup(os.close, self.top.instance_lock.fd)
        self.addCleanup(self.top.maillog.close)
        self.top.startService()
        # (not waited for: the memory reactor's thread pool never runs the store's settle)
        self.addCleanup(lambda: self.top.stopService() and None)

    def rewrite(self, old: str, new: str) -> None:
        with open(self.path) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(self.path, "w") as f:
            f.write(text.replace(old, new))

    def reread(self) -> None:
        self.top.reloader.reread(lambda path: tap.checked_config(path, print)[0])

    def maillog(self) -> str:
        self.top.maillog.flush()  # (the lines of a reactor turn are written together)
        with open(self.top.reloader.cfg.mail.maillog_file) as f:
            return f.read()

    def factory(self, name: str) -> Any:
        return self.top.getServiceNamed(name).factory

    def test_new_factories_old_state_same_queue(self) -> None:
        """mynetworks changed: the smtp port serves new connections with a factory of the new
        configuration; the factory of the sessions open before is untouched; the queue
        manager is the same, with the new delivery; AuthPolicy and Limits are the same
        objects (their counts), the new knobs in them; IMAP's \\Recent tracker and postscreen's
        cache of clients that passed are kept."""
        before = self.factory("smtp@127.0.0.1")
        imap_before = self.factory("imap@127.0.0.1")
        queue = self.top.getServiceNamed("qmgr").queue
        self.rewrite("mail_owner =", "mail_owner =\nmynetworks = 10.0.0.0/8")
        self.rewrite("[auth]", "[auth]\nlogin_max_failures = 3")
        self.reread()
        after = self.factory("smtp@127.0.0.1")
        self.assertIsNot(after, before)
        port = self.top.getServiceNamed("smtp@127.0.0.1")._waitingForPort.result
        self.assertIs(port.factory, after)
        self.assertEqual([str(n) for n in after.config.mail.mynetworks], ["10.0.0.0/8"])
        self.assertNotEqual(before.config.mail.mynetworks, after.config.mail.mynetworks)
        self.assertIs(self.top.getServiceNamed("qmgr").queue, queue)
        self.assertIs(queue.local, after.delivery)
        self.assertIs(after.delivery.queue, queue)
        self.assertIs(after.policy, before.policy)
        self.assertEqual(before.policy.max_failures, 3)
        self.assertIs(after.limits, before.limits)
        imap = self.factory("imap@127.0.0.1")
        self.assertIsNot(imap, imap_before)
        self.assertIs(imap.recent, imap_before.recent)  # (\\Recent in one session only)
        self.assertIs(after.front_door._passed, before.front_door._passed)
        self.assertIn("reload -- configuration", self.maillog())

    def test_moved_port_bound_old_one_stopped(self) -> None:
        """[listen] imap moves: the new port is bound on the reactor and the old listener
        leaves the tree (stopped); the new door shares the other doors' AuthPolicy, Limits and
        \\Recent tracker; a restart-only key is reported and kept."""
        recent = self.factory("imap@127.0.0.1").recent
        self.rewrite("imap = 2143", "imap = 2144")
        self.rewrite("maillog_file =", "maillog_file = /nonexistent/x\n#")
        self.reread()
        self.assertIn(2144, [port for port, *_ in self.reactor.tcpServers])
        svc = self.top.getServiceNamed("imap@127.0.0.1")
        self.assertEqual(svc.endpoint._port, 2144)
        self.assertEqual(len([s for s in self.top if s.name == "imap@127.0.0.1"]), 1)
        self.assertIn("[mail] maillog_file: changed; needs a restart", self.maillog())
        pop3 = self.factory("pop3@127.0.0.1")
        self.assertIs(svc.factory.policy, pop3.policy)  # one AuthPolicy for every door
        self.assertIs(svc.factory.limits, pop3.limits)
        self.assertIs(svc.factory.recent, recent)
        self.assertEqual(self.top.reloader.cfg.listen.imap, 2144)

    def test_invalid_file_refused_nothing_swapped(self) -> None:
        """A bad value: the maillog names file, section and key; every part stays."""
        before = self.factory("smtp@127.0.0.1")
        cfg = self.top.reloader.cfg
        self.rewrite("mail_owner =", "mail_owner =\nmynetworks = 10.0.0.0/33")
        self.reread()
        self.assertIs(self.factory("smtp@127.0.0.1"), before)
        self.assertIs(self.top.reloader.cfg, cfg)
        text = self.maillog()
        self.assertIn(f"error: {self.path}: [mail] mynetworks", text)
        self.assertIn("reload refused: the running configuration stays", text)
        self.assertNotIn("reload -- configuration", text)

    def test_port_in_use_refused_nothing_swapped(self) -> None:
        """A new port that cannot be bound: refused, naming it; the old listener stays."""
        def refuse(*args: Any, **kwargs: Any) -> Any:
            from twisted.internet.error import CannotListenError
            raise CannotListenError("127.0.0.1", 2144, OSError(98, "Address already in use"))

        self.patch(self.reactor, "listenTCP", refuse)
        before = self.factory("smtp@127.0.0.1")
        self.rewrite("imap = 2143", "imap = 2144")
        self.reread()
        self.assertIs(self.factory("smtp@127.0.0.1"), before)
        self.assertEqual(self.top.getServiceNamed("imap@127.0.0.1").endpoint._port, 2143)
        self.assertIn("2144", self.maillog())
        self.assertIn("reload refused", self.maillog())

    def test_check_error_keeps_config(self) -> None:
        """A ConfigError from the check: refused, the configuration object unchanged."""
        cfg = self.top.reloader.cfg

        def check(path: str) -> Any:
            raise ConfigError([f"{path}: [tls] ssl_cert: no such file"])

        self.top.reloader.reread(check)
        self.assertIs(self.top.reloader.cfg, cfg)
        self.assertIn("[tls] ssl_cert: no such file", self.maillog())
