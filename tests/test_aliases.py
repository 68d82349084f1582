"""Tests for mailsuite.mta.aliases: aliases(5) parsing, expansion, re-reading."""

from __future__ import annotations

import os

from twisted.trial import unittest

from mailsuite.mta.aliases import (
    AliasLookupError,
    AliasMap,
    AliasParseError,
    parse_aliases,
    parse_list,
    read_file,
    validate,
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

    def test_reread_on_change(self) -> None:
        """An edited file (size or mtime changed) is read again on the next lookup, so
        newaliases (or an editor) takes effect at once in the running server."""
        path = self.write("a: boss\n")
        amap = AliasMap([path])
        self.assertEqual([t.text for t in amap.snapshot()[0]["a"]], ["boss"])
        with open(path, "w") as f:
            f.write("a: alice, carol\n")
        self.assertEqual([t.text for t in amap.snapshot()[0]["a"]], ["alice", "carol"])

    def test_missing_file_is_empty(self) -> None:
        """A missing alias file counts as empty (fresh system without /etc/aliases)."""
        self.assertEqual(AliasMap([self.mktemp()]).snapshot()[0], {})

    def rewrite(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1))  # seen as changed even within a tick

    def test_broken_edit_keeps_the_last_good_table(self) -> None:
        """As Postfix with newaliases: an edit that breaks the file leaves the table read
        before in force (it made every local recipient 451); each bad line (file, line) and
        what happens is warned once, not at every lookup; the fixed file takes effect."""
        warnings: list[str] = []
        path = self.write("postmaster: root\na: boss\n")
        amap = AliasMap([path], warn=warnings.append)
        self.assertEqual([t.text for t in amap.snapshot()[0]["a"]], ["boss"])
        self.rewrite(path, "postmaster: root\na: carol\nbroken line\nb:\n")
        self.assertEqual([t.text for t in amap.snapshot()[0]["a"]], ["boss"])
        self.assertEqual(warnings, [
            f"{path}, line 3: need name: value, got 'broken line'",
            f"{path}, line 4: alias 'b' has no targets",
            f"{path}: 2 bad lines; the table read before stays in force until the file is"
            " fixed (newaliases lists the problems)",
        ])
        amap.snapshot()
        self.assertEqual(len(warnings), 3)
        self.rewrite(path, "postmaster: root\na: carol\n")
        self.assertEqual([t.text for t in amap.snapshot()[0]["a"]], ["carol"])
        self.assertEqual(len(warnings), 3)

    def test_broken_at_first_read_keeps_the_good_lines(self) -> None:
        """With no table read before (a start on a broken file), the good lines are in force
        and the bad ones are left out with a warning, as postalias builds a table."""
        warnings: list[str] = []
        path = self.write("postmaster: root\nbroken\nteam: boss, carol\n")
        table, _ = AliasMap([path], warn=warnings.append).snapshot()
        self.assertEqual(sorted(table), ["postmaster", "team"])
        self.assertEqual(warnings, [
            f"{path}, line 2: need name: value, got 'broken'",
            f"{path}: 1 bad line left out, the other entries are in force (newaliases lists"
            " the problems)",
        ])

    def test_unreadable_file(self) -> None:
        """A file never read that cannot be read fails lookups (-> 451, nothing is lost) and
        is tried again at each lookup; once a table was read, it stays in force instead."""
        warnings: list[str] = []
        path = self.mktemp()
        os.mkdir(path)  # unreadable as a file, even for root
        amap = AliasMap([path], warn=warnings.append)
        self.assertRaises(AliasLookupError, amap.snapshot)
        self.assertIn(f"{path}: cannot read: Is a directory; local mail is deferred", warnings[0])
        os.rmdir(path)
        self.rewrite(path, "postmaster: root\n")
        self.assertIn("postmaster", amap.snapshot()[0])
        os.unlink(path)
        os.mkdir(path)
        self.assertIn("postmaster", amap.snapshot()[0])
        self.assertIn("the table read before stays in force", warnings[-1])

    def test_first_file_wins(self) -> None:
        """With several alias_maps, the first file that names an alias wins."""
        amap = AliasMap([self.write("a: one\n"), self.write("a: two\nb: three\n")])
        table = amap.snapshot()[0]
        self.assertEqual([t.text for t in table["a"]], ["one"])
        self.assertEqual([t.text for t in table["b"]], ["three"])

    def test_owner_recorded(self) -> None:
        """The owner uid of each file is known (it decides |command and /file privileges)."""
        path = self.write("a: b\n")
        self.assertEqual(AliasMap([path]).snapshot()[1], {path: os.stat(path).st_uid})


class ListAndValidateTests(unittest.TestCase):
    def test_read_file(self) -> None:
        """The one reader of an alias file: table, errors, warnings and owner; OSError when it
        cannot be read."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a: b\nbroken line\na: c\n")
        table, errors, warnings, owner = read_file(path)
        self.assertEqual([t.text for t in table["a"]], ["b"])
        self.assertEqual(len(errors), 1)
        self.assertIn(", line 2: ", errors[0])
        self.assertEqual(len(warnings), 1)
        self.assertEqual(owner, os.stat(path).st_uid)
        self.assertRaises(FileNotFoundError, read_file, path + ".missing")
        self.assertRaises(IsADirectoryError, read_file, os.path.dirname(path) or ".")

    def test_parse_list(self) -> None:
        """~/.forward / :include: syntax: commas or newlines, # comments, quoted commands."""
        items = parse_list('# me\n\\boss, "|/bin/cat -n"\n/tmp/x\n\n  carol  \n', "f")
        self.assertEqual([(t.text, t.lineno) for t in items],
                         [("\\boss", 2), ("|/bin/cat -n", 2), ("/tmp/x", 3), ("carol", 5)])

    def test_validate_reports_errors_and_postmaster(self) -> None:
        """validate() (newaliases) gives every error with file/line, and warns about a missing
        postmaster alias and missing files."""
        good = self.mktemp()
        with open(good, "w") as f:
            f.write("team: boss\n")
        _, errors, warnings = validate([good])
        self.assertEqual(errors, [])
        self.assertIn("no postmaster alias", warnings[0])
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("postmaster: root\nbroken line\n")
        _, errors, _ = validate([bad, self.mktemp()])
        self.assertEqual(errors, [f"{bad}, line 2: need name: value, got 'broken line'"])
        _, _, warnings = validate([self.mktemp()])
        self.assertIn("does not exist", warnings[0])

    def test_validate_lists_every_bad_line_and_duplicates(self) -> None:
        """newaliases names every bad line of every file, not only the first, and warns
        about a name given twice (postalias: duplicate entry)."""
        first, second = self.mktemp(), self.mktemp()
        with open(first, "w") as f:
            f.write("postmaster: root\nbad one\na: b\na: c\n")
        with open(second, "w") as f:
            f.write("x:\nbad two\n")
        _, errors, warnings = validate([first, second])
        self.assertEqual(errors, [
            f"{first}, line 2: need name: value, got 'bad one'",
            f"{second}, line 1: alias 'x' has no targets",
            f"{second}, line 2: need name: value, got 'bad two'",
        ])
        self.assertEqual(warnings, [f"{first}, line 4: duplicate entry 'a' ignored"])
