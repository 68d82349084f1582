"""A broken /etc/aliases in the running server: mail keeps flowing, the maillog says why."""

from __future__ import annotations

import os
import re
import smtplib

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_commands import read, wait_for


def send(site: Site, rcpt: str, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
        s.sendmail("x@example.test", [rcpt], f"Subject: {body}\n\n{body}\n".encode())


class BrokenAliasesTests(unittest.TestCase):
    def test_broken_edit_keeps_the_last_good_table(self) -> None:
        """An edit that adds bad lines: every local recipient was 451 4.3.0 with the reason on
        the terminal only. Now the table read before stays in force (team still reaches boss
        and carol, not the edited list) and the maillog has a warning per bad line."""
        site = Site(self, aliases="postmaster: boss\nteam: boss, carol\n")
        site.start()
        aliases = os.path.join(site.dir, "aliases")
        with open(aliases, "w") as f:
            f.write("postmaster: boss\nteam: boss\nthis line is bad\nalso bad\n")
        send(site, "team@example.test", "still the old team")
        wait_for("delivery", lambda: "still the old team" in read(site.inbox("carol")))
        self.assertIn("still the old team", read(site.inbox("boss")))
        log = site.maillog_text()
        for line in (3, 4):
            self.assertRegex(log, rf"postfix/local\[\d+\]: warning: {re.escape(aliases)},"
                                  rf" line {line}: need name: value")
        self.assertIn(f"{aliases}: 2 bad lines; the table read before stays in force", log)

    def test_start_on_a_broken_file(self) -> None:
        """A first start on a broken file: the good lines work, the bad one is left out, and
        the maillog says so from the start."""
        site = Site(self, aliases="postmaster: boss\nbroken\nteam: boss, carol\n")
        site.start()
        aliases = os.path.join(site.dir, "aliases")
        wait_for("the warning", lambda: f"warning: {aliases}, line 2: need name: value"
                 in site.maillog_text())
        self.assertIn(f"{aliases}: 1 bad line left out", site.maillog_text())
        send(site, "team@example.test", "good lines work")
        wait_for("delivery", lambda: "good lines work" in read(site.inbox("carol")))
