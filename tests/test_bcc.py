"""BCC maps (mailsuite/filter/bcc.py): always_bcc, sender_bcc_maps, recipient_bcc_maps with
Postfix's table syntax and address look-up order, copies added once, never copied again, the
tables re-read when they change and refused with file:line when broken."""

from __future__ import annotations

import os

from twisted.trial import unittest

from mailsuite import config, filter, threads
from mailsuite.filter.bcc import BccStage, lookup_keys, parse_map
from mailsuite.tablefile import TableError, TableFile
from mailsuite.mta.transaction import DELIVERED, QUEUED, Recipient
from mailsuite.startup import StartupError
from tests.configs import real_config
from tests.test_delivery import ALICE, BOSS, inbox
from tests.test_transaction import BODY, PipelineCase

LOCAL = {"mail.example.com", "localhost"}


class ParseMapTests(unittest.TestCase):
    def test_postfix_source_syntax(self) -> None:
        """key value per line, # comments, blank lines, a continuation line, keys folded to
        lower case, <address> values as Postfix allows them."""
        table = parse_map("# sender_bcc\n\nBoss@Mail.Example.com  audit@mail.example.com\n"
                          "@sales.example\n  <sales-archive@mail.example.com>\n", "f")
        self.assertEqual(table, {"boss@mail.example.com": "audit@mail.example.com",
                                 "@sales.example": "sales-archive@mail.example.com"})

    def test_broken_lines_named_with_file_and_line(self) -> None:
        """Every broken line is reported as file:line: no value, two addresses, a key twice."""
        with self.assertRaises(TableError) as e:
            parse_map("a@x b@x\nlonely\nc@x d@x, e@x\na@x f@x\n", "/etc/bcc")
        self.assertEqual(e.exception.errors, [
            "/etc/bcc:2: 'lonely' has no value (expected: key address)",
            "/etc/bcc:3: 'd@x, e@x' is not one address (a BCC map gives one)",
            "/etc/bcc:4: 'a@x' is repeated (first on line 1)"])


class LookupOrderTests(unittest.TestCase):
    def test_local_domain(self) -> None:
        """Postfix's order for our own domains: user@domain, user, @domain."""
        self.assertEqual(lookup_keys("Boss@Mail.Example.com", LOCAL),
                         ["boss@mail.example.com", "boss", "@mail.example.com"])

    def test_remote_domain_has_no_bare_user(self) -> None:
        """For another domain the bare user is not a key (it would copy every joe@ anywhere)."""
        self.assertEqual(lookup_keys("joe@far.example", LOCAL), ["joe@far.example", "@far.example"])

    def test_address_extension(self) -> None:
        """With a recipient delimiter: user+ext@domain, user@domain, user+ext, user, @domain."""
        self.assertEqual(lookup_keys("boss+x@mail.example.com", LOCAL, "+"),
                         ["boss+x@mail.example.com", "boss@mail.example.com", "boss+x", "boss",
                          "@mail.example.com"])


class StageTests(PipelineCase):
    def maps(self, sender: str = "", recipient: str = "") -> tuple[list[TableFile], ...]:
        out = []
        for text in (sender, recipient):
            files = []
            if text:
                path = self.mktemp()
                with open(path, "w") as f:
                    f.write(text)
                table = TableFile(path, parse_map,
                                  lambda t: self.maillog.write("cleanup", f"warning: {t}"))
                table.load()
                files.append(table)
            out.append(files)
        return tuple(out)

    def stage(self, always: str = "", sender: str = "", recipient: str = "") -> BccStage:
        senders, recipients = self.maps(sender, recipient)
        return BccStage(always, senders, recipients, LOCAL, threads.inline)

    def run_with(self, stage: BccStage, *rcpts: str, sender: str = "joe@far.example") -> list:
        self.pipeline.stages = [stage]
        env = self.smtp_envelope(*(Recipient(a, route=self.local(a, sender)) for a in rcpts),
                                 sender=sender)
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.env = env
        return results

    def test_always_bcc_copy_is_delivered_with_notify_never(self) -> None:
        """always_bcc: one more recipient, NOTIFY=NEVER (Postfix's NOTIFY=NONE), delivered."""
        results = self.run_with(self.stage(always="alice@mail.example.com"),
                                "boss@mail.example.com")
        self.assertEqual([r.status for r in results], [DELIVERED, DELIVERED])
        added = self.env.recipients[-1]
        self.assertEqual((added.address, added.params.notify, added.bcc),
                         ("alice@mail.example.com", ("NEVER",), True))
        self.assertEqual(len(inbox(self.store, ALICE)), 1)

    def test_sender_map_by_domain_and_recipient_map_by_user(self) -> None:
        """sender_bcc_maps matches @domain of the sender; recipient_bcc_maps the bare user of
        a local recipient; remote copies are queued."""
        stage = self.stage(sender="@far.example archive@keep.example\n",
                           recipient="boss alice@mail.example.com\n")
        results = self.run_with(stage, "boss@mail.example.com")
        self.assertEqual([r.address for r in self.env.recipients],
                         ["boss@mail.example.com", "archive@keep.example",
                          "alice@mail.example.com"])
        self.assertEqual([r.status for r in results], [DELIVERED, QUEUED, DELIVERED])

    def test_no_duplicate_and_no_copy_of_a_copy(self) -> None:
        """A BCC address that is a recipient already is not added again; the copy for boss is
        alice, whose own map entry (a copy of the copy) is not followed."""
        stage = self.stage(always="boss@mail.example.com",
                           recipient="boss alice@mail.example.com\nalice archive@keep.example\n")
        self.run_with(stage, "boss@mail.example.com")
        self.assertEqual([r.address for r in self.env.recipients],
                         ["boss@mail.example.com", "alice@mail.example.com"])
        self.assertEqual(len(inbox(self.store, BOSS)), 1)

    def test_null_sender_not_looked_up(self) -> None:
        """A bounce (null sender) has no sender to look up."""
        stage = self.stage(sender="@far.example archive@keep.example\n")
        self.run_with(stage, "boss@mail.example.com", sender="")
        self.assertEqual(len(self.env.recipients), 1)

    def test_changed_table_is_reread_broken_one_kept(self) -> None:
        """A changed map is used for the next message; a broken change is refused with
        file:line in the maillog and the previous table stays."""
        stage = self.stage(recipient="boss alice@mail.example.com\n")
        path = stage.recipient_maps[0].path
        with open(path, "w") as f:
            f.write("boss archive@keep.example\n")
        os.utime(path, ns=(1, 1))
        self.run_with(stage, "boss@mail.example.com")
        self.assertEqual(self.env.recipients[-1].address, "archive@keep.example")
        with open(path, "w") as f:
            f.write("boss\n")
        self.run_with(stage, "boss@mail.example.com")
        self.assertEqual(self.env.recipients[-1].address, "archive@keep.example")
        self.assertIn(f"warning: {path}:1: 'boss' has no value (expected: key address): the"
                      " table is not changed", self.log())


class TableFileTests(unittest.TestCase):
    def test_a_fifo_is_refused_not_waited_on(self) -> None:
        """A map (or rules file) that is a FIFO: refused at once; reading it waited for a
        writer for ever (a pool thread, or the master at start)."""
        path = self.mktemp()
        os.mkfifo(path)
        with self.assertRaises(OSError) as caught:
            TableFile(path, parse_map).load()
        self.assertIn("not a regular file", str(caught.exception))

    def test_looked_at_once_per_interval(self) -> None:
        """With a clock and an interval a changed file is read at the first look after the
        interval, not before; load_or gives the default for a file not usable yet and reads
        it once it changes."""
        path = self.mktemp()
        clock, warned = [10.0], []
        lines = TableFile(path, lambda text, p: text.split(), warned.append,
                          clock=lambda: clock[0], interval=1.0)
        self.assertEqual(lines.load_or(["none"]), ["none"])
        self.assertEqual(len(warned), 1)
        with open(path, "w") as f:
            f.write("a b\n")
        clock[0] += 1.0
        self.assertEqual(lines.current(), ["a", "b"])
        with open(path, "w") as f:
            f.write("c\n")
        clock[0] += 0.5
        self.assertEqual(lines.current(), ["a", "b"])  # not a second yet
        clock[0] += 0.5
        self.assertEqual(lines.current(), ["c"])


class ConfigTests(unittest.TestCase):
    def test_keys_parsed(self) -> None:
        """The keys read as Postfix writes them: hash:/path lists, one always_bcc address."""
        cfg = config.parse_config(
            "[mail]\nalways_bcc = <audit@example.com>\n"
            "sender_bcc_maps = hash:/etc/mailsuite/sender_bcc, texthash:/etc/x\n",
            "mail.ini", hostname=lambda: "mx.example.com")
        self.assertEqual(cfg.mail.always_bcc, "audit@example.com")
        self.assertEqual(cfg.mail.sender_bcc_maps, ["/etc/mailsuite/sender_bcc", "/etc/x"])
        with self.assertRaises(config.ConfigError):
            config.parse_config("[mail]\nalways_bcc = a@x, b@x\n", "mail.ini",
                                hostname=lambda: "mx.example.com")

    def test_broken_map_refuses_the_start(self) -> None:
        """A broken map at start: a StartupError naming the key, file and line."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# ok\nboss\n")
        cfg = real_config(mail={"recipient_bcc_maps": [path]})
        with self.assertRaises(StartupError) as e:
            filter.stages(cfg, None, None, threads.inline)
        self.assertEqual(str(e.exception), f"[mail] *_bcc_maps: {path}:2: 'boss' has no value"
                         " (expected: key address)")
        quiet = real_config(auth_checks={"enabled": False})  # no inbound checks either
        self.assertEqual(filter.stages(quiet, None, None, threads.inline), [])
