"""Tests for mailsuite.smtp.aliases: aliases(5) parsing, expansion, re-reading."""

from __future__ import annotations

import os

from twisted.trial import unittest

from mailsuite.smtp.aliases import (
    AliasLookupError,
    AliasMap,
    AliasParseError,
    parse_aliases,
)

SAMPLE = """\
# The aliases of the tutorial's site
postmaster: root
Team:   boss, alice,
        bob
  # a comment inside a continued entry is skipped

"sales dept": \\boss
prog:   "|/usr/bin/procmail -a x", /var/log/mail.copy, :include:/etc/mail/list
"""


class ParseTests(unittest.TestCase):
    def test_lists_continuations_comments(self) -> None:
        """`name: a, b` lists, continuation lines and comments give the right targets."""
        table = parse_aliases(SAMPLE, "/etc/aliases")
        self.assertEqual([t.text for t in table["team"]], ["boss", "alice", "bob"])
        self.assertEqual([t.text for t in table["postmaster"]], ["root"])

    def test_names_are_lower_cased(self) -> None:
        """Alias names are case-insensitive: stored lower case."""
        self.assertIn("team", parse_aliases(SAMPLE, "f"))
        self.assertNotIn("Team", parse_aliases(SAMPLE, "f"))

    def test_quoted_name_and_backslash_user(self) -> None:
        """A quoted name may hold spaces; `\\user` is kept as a user target."""
        table = parse_aliases(SAMPLE, "f")
        self.assertEqual(table["sales dept"][0].kind, "user")

    def test_unsupported_forms_are_parsed(self) -> None:
        """|cmd (quoted, with spaces), /file and :include: are parsed and classified."""
        kinds = [(t.kind, t.text) for t in parse_aliases(SAMPLE, "f")["prog"]]
        self.assertEqual(
            kinds,
            [
                ("program", "|/usr/bin/procmail -a x"),
                ("file", "/var/log/mail.copy"),
                ("include", ":include:/etc/mail/list"),
            ],
        )

    def test_errors_carry_file_and_line(self) -> None:
        """Every bad line is reported at once, each with the file name and its line number."""
        text = "ok: boss\nno colon here\n  \n\ngood: x\nempty:\n"
        e = self.assertRaises(AliasParseError, parse_aliases, text, "/etc/aliases")
        self.assertEqual(len(e.errors), 2)
        self.assertIn("/etc/aliases, line 2", e.errors[0])
        self.assertIn("/etc/aliases, line 6", e.errors[1])

    def test_continuation_without_entry(self) -> None:
        """A first line that starts with whitespace is an error, not silently glued to nothing."""
        e = self.assertRaises(AliasParseError, parse_aliases, "  boss\n", "f")
        self.assertIn("f, line 1", e.errors[0])

    def test_duplicate_keeps_first(self) -> None:
        """A name given twice keeps its first entry (postalias behaviour)."""
        table = parse_aliases("a: x\nA: y\n", "f")
        self.assertEqual([t.text for t in table["a"]], ["x"])


class MapTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_recursive_expansion(self) -> None:
        """Aliases of aliases expand to final user names, each once."""
        path = self.write("all: team, boss\nteam: boss, alice\n")
        self.assertEqual(AliasMap([path]).expand("ALL").users, ["boss", "alice"])

    def test_not_an_alias(self) -> None:
        """A name that is no alias expands to itself, marked as not aliased."""
        exp = AliasMap([self.write("a: b\n")]).expand("Boss")
        self.assertEqual((exp.users, exp.aliased), (["boss"], False))

    def test_backslash_stops_expansion(self) -> None:
        """`\\boss` is the user boss even though boss is itself an alias."""
        path = self.write("boss: \\boss, archive\narchive: carol\n")
        self.assertEqual(AliasMap([path]).expand("boss").users, ["boss", "carol"])

    def test_self_reference(self) -> None:
        """`boss: boss, alice` delivers to the user boss and to alice (sendmail/Postfix)."""
        exp = AliasMap([self.write("boss: boss, alice\n")]).expand("boss")
        self.assertEqual(exp.users, ["boss", "alice"])
        self.assertEqual(exp.looped, {"boss"})

    def test_loop_terminates(self) -> None:
        """a -> b -> a stops, and the looping name is reported."""
        exp = AliasMap([self.write("a: b\nb: a\n")]).expand("a")
        self.assertEqual(exp.users, ["a"])
        self.assertEqual(exp.looped, {"a"})

    def test_local_domain_address_recurses(self) -> None:
        """An alias target `user@local-domain` is expanded like a bare name; remote is unsupported."""
        path = self.write("a: Boss@Mail.Example, x@remote.example\n")
        exp = AliasMap([path], ["mail.example"]).expand("a")
        self.assertEqual(exp.users, ["boss"])
        self.assertEqual([t.text for t in exp.unsupported], ["x@remote.example"])

    def test_unsupported_reported(self) -> None:
        """Program/file/include targets come back as unsupported, never dropped silently."""
        exp = AliasMap([self.write('a: boss, "|/bin/cat"\n')]).expand("a")
        self.assertEqual([t.kind for t in exp.unsupported], ["program"])

    def test_reread_on_change(self) -> None:
        """An edited file (size or mtime changed) is read again on the next lookup."""
        path = self.write("a: boss\n")
        amap = AliasMap([path])
        self.assertEqual(amap.expand("a").users, ["boss"])
        with open(path, "w") as f:
            f.write("a: alice, carol\n")
        self.assertEqual(amap.expand("a").users, ["alice", "carol"])

    def test_missing_file_is_empty(self) -> None:
        """A missing alias file counts as empty (fresh system without /etc/aliases)."""
        self.assertEqual(AliasMap([self.mktemp()]).expand("boss").users, ["boss"])

    def test_broken_file_fails_lookups(self) -> None:
        """A broken file makes lookups fail (-> 451) until fixed; check() names file and line."""
        path = self.write("a b c\n")
        amap = AliasMap([path])
        self.assertRaises(AliasLookupError, amap.expand, "boss")
        e = self.assertRaises(AliasParseError, amap.check)
        self.assertIn(f"{path}, line 1", str(e))
        with open(path, "w") as f:
            f.write("a: boss\n")
        os.utime(path, ns=(0, 0))
        self.assertEqual(amap.expand("a").users, ["boss"])

    def test_first_file_wins(self) -> None:
        """With several alias_maps, the first file that names an alias wins."""
        amap = AliasMap([self.write("a: one\n"), self.write("a: two\nb: three\n")])
        self.assertEqual(amap.expand("a").users, ["one"])
        self.assertEqual(amap.expand("b").users, ["three"])
