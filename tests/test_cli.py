"""Tests for mailsuite.cli: sendmail option parsing, header fix-up, newaliases and mailq output."""

from __future__ import annotations

import configparser
import io
import os
import subprocess
import sys

from twisted.trial import unittest

from mailsuite import cli, queuecmd, tap
from mailsuite.config import Config
from mailsuite.mta import maildrop
from tests.configs import real_config


class ArgsTests(unittest.TestCase):
    def test_postfix_options(self) -> None:
        """-t -oi -f addr -F name -C path and recipients parse as Postfix's sendmail does;
        attached values (-fjoe) work too; unknown -o options are ignored."""
        a = cli.parse_sendmail_args(["-t", "-oi", "-odb", "-f", "joe@x", "-F", "Joe X",
                                     "-C", "/etc/m.ini", "a@b", "c"])
        self.assertEqual((a.extract, a.dot_ends, a.sender, a.full_name, a.config, a.recipients),
                         (True, False, "joe@x", "Joe X", "/etc/m.ini", ["a@b", "c"]))
        self.assertEqual(cli.parse_sendmail_args(["-fjoe", "-i"]).sender, "joe")
        self.assertEqual(cli.parse_sendmail_args(["-f", "<>"]).sender, "")

    def test_modes(self) -> None:
        """-bs, -bp, -bi select modes; -q asks for a flush; -bv is refused as unsupported."""
        self.assertEqual(cli.parse_sendmail_args(["-bs"]).mode, "s")
        self.assertEqual(cli.parse_sendmail_args(["-bp"]).mode, "p")
        self.assertEqual(cli.parse_sendmail_args(["-bi"]).mode, "i")
        self.assertTrue(cli.parse_sendmail_args(["-q"]).flush)
        self.assertRaises(cli.Fatal, cli.parse_sendmail_args, ["-bv"])
        self.assertRaises(cli.Fatal, cli.parse_sendmail_args, ["-Z"])

    def test_config_path_same_as_daemon(self) -> None:
        """Commands find mail.ini exactly as twistd does (--config, $MAILSUITE_CONFIG, /etc)."""
        self.patch(os, "environ", {"MAILSUITE_CONFIG": "/env.ini"})
        self.assertEqual(cli.config_path(None), tap.config_path(None))
        self.assertEqual(cli.config_path("/x.ini"), "/x.ini")


class PrepareTests(unittest.TestCase):
    def test_adds_missing_headers(self) -> None:
        """From: (with -F name, @myorigin added), Date: and Message-ID: are added if missing."""
        out, found = cli.prepare(b"Subject: x\n\nbody\n", "joe", "Joe X", False, "ex.test",
                                 "mail.ex.test", "ABC", 0)
        self.assertIn(b"From: Joe X <joe@ex.test>\n", out)
        self.assertIn(b"Date: ", out)
        self.assertIn(b"Message-ID: <19700101000000.ABC@mail.ex.test>", out)
        self.assertTrue(out.endswith(b"\n\nbody\n"))
        self.assertEqual(found, [])

    def test_extract_and_bcc(self) -> None:
        """-t: To, Cc and Bcc recipients (folded lines too); Bcc: is removed; own From kept."""
        msg = b"From: me@x\nTo: A <a@x>,\n  b@x\nCc: c@x\nBcc: d@x\n\nbody\n"
        out, found = cli.prepare(msg, "joe", None, True, "x", "h", "Q", 0)
        self.assertEqual(found, ["a@x", "b@x", "c@x", "d@x"])
        self.assertNotIn(b"Bcc", out)
        self.assertEqual(out.count(b"From:"), 1)

    def test_crlf_and_no_header(self) -> None:
        """CRLF input becomes LF; a message with no header gets one before its body."""
        out, _ = cli.prepare(b"just text\r\nline 2\r\n", "joe", None, False, "x", "h", "Q", 0)
        self.assertNotIn(b"\r", out)
        self.assertTrue(out.endswith(b"\n\njust text\nline 2\n"))

    def test_read_message_dot(self) -> None:
        """Without -i a lone dot ends the message; with -i it is content."""
        self.assertEqual(cli.read_message(io.BytesIO(b"a\n.\nb\n"), True), b"a\n")
        self.assertEqual(cli.read_message(io.BytesIO(b"a\n.\nb\n"), False), b"a\n.\nb\n")


class ReportTests(unittest.TestCase):
    def cfg(self, aliases: str = "postmaster: root\n") -> Config:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "aliases")
        with open(path, "w") as f:
            f.write(aliases)
        return real_config(mail={"alias_maps": [path], "queue_directory": d})

    def test_newaliases_errors(self) -> None:
        """newaliases prints each error with file and line and returns 1."""
        cfg = self.cfg("postmaster: root\nbad\n")
        err = io.StringIO()
        self.assertEqual(cli.newaliases_report(cfg, err), 1)
        self.assertIn(f"newaliases: error: {cfg.mail.alias_maps[0]}, line 2", err.getvalue())

    def test_mailq(self) -> None:
        """mailq: 'Mail queue is empty', then Postfix's columns and the closing total line."""
        cfg = self.cfg()
        out = io.StringIO()
        queuecmd.mailq_report(cfg, out)
        self.assertEqual(out.getvalue(), "Mail queue is empty\n")
        os.makedirs(maildrop.maildrop_dir(cfg.mail.queue_directory))
        queue_id = maildrop.drop(cfg.mail.queue_directory, "joe", ["a@x", "b@x"], b"x" * 2000)
        out = io.StringIO()
        queuecmd.mailq_report(cfg, out)
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[0].startswith("-Queue ID-  --Size--"))
        self.assertTrue(lines[1].startswith(f"{queue_id}      2000 "))
        self.assertTrue(lines[1].endswith("  joe"))
        self.assertEqual(lines[2].strip(), "a@x")
        self.assertEqual(lines[-1], "-- 2 Kbytes in 1 Request.")


class HelpTests(unittest.TestCase):
    def test_every_console_command_answers_help(self) -> None:
        """Every console_scripts entry point of setup.cfg, and ``twistd mailsuite``, prints its
        usage on stdout for --help and exits 0, without reading any mail.ini."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        setup = configparser.ConfigParser()
        setup.read(os.path.join(root, "setup.cfg"))
        lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
        commands = {}
        for line in lines:
            name, _, target = (part.strip() for part in line.partition("="))
            module, _, function = target.partition(":")
            commands[name] = (f"import sys; sys.argv[0] = {name!r};"
                              f" from {module} import {function}; {function}()")
        self.assertGreaterEqual(set(commands), {"sendmail", "mailq", "newaliases"})
        commands["twistd mailsuite"] = ("import sys; sys.argv[1:1] = ['mailsuite'];"
                                        " from twisted.scripts.twistd import run; run()")
        env = dict(os.environ, PYTHONPATH=root, MAILSUITE_CONFIG="/nonexistent/mail.ini")
        for name, code in commands.items():
            p = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                               timeout=60, check=False, env=env, cwd="/")
            self.assertEqual((p.returncode, p.stderr), (0, b""), name)
            self.assertTrue(p.stdout.lower().startswith(b"usage:"), (name, p.stdout))
            self.assertIn(b"--config", p.stdout, name)
