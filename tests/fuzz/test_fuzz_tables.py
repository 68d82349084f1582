"""The tables and the configuration: aliases(5) files, ~/.forward lists, smtp_sasl_password_maps,
/etc/shadow, mail.ini and each of its value parsers. Invariants: arbitrary text gives the
parser's own error, never another exception; a table written in the file's syntax reads back as
the same entries; mail.ini setting every key to its default reads as the empty file."""

from __future__ import annotations

import contextlib

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite import config, configschema, uidlformat
from mailsuite.auth.checker import parse_shadow
from mailsuite.mta.aliases import AliasParseError, parse_aliases, parse_list, parse_partly
from mailsuite.mta.relay import parse_password_map
from tests.fuzz import fuzz
from tests.fuzz.drive import peak_memory

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.+"
names = st.text(_NAME_CHARS, min_size=1, max_size=10)
targets = st.one_of(
    names,
    names.map("\\".__add__),
    st.tuples(names, names).map("@".join),
    st.sampled_from(['"|/usr/bin/procmail -a x"', "/var/log/copy", ":include:/etc/mail/list",
                     '"a, b"', '"|cmd \\"q\\""', '"x:y"']),
)
_SOME_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
_LINES = st.lists(st.sampled_from([
    "postmaster: root", "team: boss,", "  alice", "\tbob", "# c", "", '"a b": c', "x:", ":y",
    "a: :include:/x", "a b: c", '"unclosed: x', "a: b, , c", "dup: a", "dup: b", " lead",
    "[mail]", "myhostname = mx.example.com", "x = $$y", "x = ${myhostname}", "= v", "k =",
    "k = v # comment", "k = v;x", "  continued", "[auth]", "[nosuch]", "mydomain = $mydomain",
]), max_size=10).map("\n".join)
texts = _SOME_TEXT | _LINES


def _unquote(text: str) -> str:
    if text.startswith('"'):
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


class AliasFuzz(unittest.TestCase):
    @fuzz(st.dictionaries(names, st.lists(targets, min_size=1, max_size=4), max_size=5),
          st.booleans(), weight=3)
    def test_round_trip(self, table: dict[str, list[str]], continued: bool) -> None:
        """Entries written as aliases(5) (one per line, or targets on continuation lines)
        read back; names are case-insensitive."""
        lines = ["# written by the fuzzer"]
        for name, items in table.items():
            if continued:
                rest = "".join(f",\n\t{t}" for t in items[1:])
                lines.append(f"{name.upper()}: {items[0]}{rest}")
            else:
                lines.append(f"{name}: " + ", ".join(items))
        parsed = parse_aliases("\n".join(lines) + "\n", "aliases")
        self.assertEqual({k: [t.text for t in v] for k, v in parsed.items()},
                         {k.lower(): [_unquote(t) for t in v] for k, v in table.items()})

    @fuzz(texts, weight=3)
    @example("a:\n\t")
    def test_anything(self, text: str) -> None:
        table, errors, _warnings = parse_partly(text, "aliases")
        for name, items in table.items():
            self.assertTrue(name and items, (name, items))
        try:
            parse_aliases(text, "aliases")
        except AliasParseError as e:
            self.assertEqual(e.errors, errors)
        self.flushLoggedErrors()
        parse_list(text, ".forward")


class MapFuzz(unittest.TestCase):
    @fuzz(st.dictionaries(st.from_regex(r"\[[a-z.]{1,10}\]:[0-9]{1,5}", fullmatch=True),
                          st.tuples(names, st.text(_NAME_CHARS + ":!", max_size=10)),
                          max_size=4), weight=3)
    def test_password_map_round_trip(self, table: dict[str, tuple[str, str]]) -> None:
        text = "\n".join(f"{key}   {user}:{password}" for key, (user, password) in table.items())
        self.assertEqual(parse_password_map("# x\n" + text), table)

    @fuzz(st.dictionaries(names.filter(lambda n: n[0] not in "+-"),
                          st.tuples(st.text(_NAME_CHARS + "$/", max_size=20),
                                    st.lists(st.one_of(st.none(), st.integers(0, 99999)),
                                             min_size=6, max_size=6)),
                          max_size=4), weight=3)
    def test_shadow_round_trip(self, table: dict[str, tuple[str, list[int | None]]]) -> None:
        text = "\n".join(
            ":".join([name, hashed, *("" if n is None else str(n) for n in numbers), ""])
            for name, (hashed, numbers) in table.items())
        parsed = parse_shadow(text)
        self.assertEqual(set(parsed), set(table))
        for name, (hashed, _) in table.items():
            self.assertEqual(parsed[name].hash, hashed)

    @fuzz(texts, weight=3)
    def test_anything(self, text: str) -> None:
        parse_password_map(text)
        parse_shadow(text)


_SECTIONS = configschema.SECTIONS
_VALUES = st.sampled_from([
    "", "yes", "no", "0", "1", "-1", "25", "65536", "99999999999", "10M", "1k", "5d", "300s", "x",
    "$myhostname", "${mydomain}", "$$", "$", "$nosuch", "a, b", "127.0.0.0/8", "[::1]/128",
    "/etc/aliases", "hash:/etc/aliases", "relative", "mbox:~/mail:INBOX=/var/mail/%u",
    "%08Xu%08Xv", "%", "%Q", "[relay.example]:587", "shadow", "pam", "may", "encrypt",
    "mx.example.com", "-bad-", "\u00e9", "all", "localhost", "/tmp/x.sock", "required",
]) | st.text(max_size=12).map(lambda t: t.replace("\n", " ").replace("\r", " "))


_FREE_KEYS = ["example.com", "Mail.Example.ORG", "localhost", "-bad-", "a..b", "\u00e9.example"]


@st.composite
def ini_files(draw: st.DrawFn) -> str:
    lines = []
    for name, section in _SECTIONS.items():
        # a section of free keys ([dkim]: one line a domain) gets names of every kind
        names = [k.name for k in section.keys] or _FREE_KEYS
        keys = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
        if keys or draw(st.booleans()):
            lines.append(f"[{name}]")
        lines.extend(f"{key} = {draw(_VALUES)}" for key in keys)
    return "\n".join(lines) + "\n"


def _parse(text: str) -> config.Config:
    return config.parse_config(text, "mail.ini", hostname=lambda: "mx.example.com")


class ConfigFuzz(unittest.TestCase):
    @fuzz(ini_files() | texts, weight=2)
    def test_only_config_errors(self, text: str) -> None:
        try:
            _parse(text)
        except config.ConfigError as e:
            self.assertTrue(e.errors)
            self.assertTrue(all(line.startswith("mail.ini: ") for line in e.errors), e.errors)

    @fuzz(st.lists(st.sampled_from([(s, k) for s, sec in _SECTIONS.items() for k in sec.keys
                                    if isinstance(k.default, str)]),
                   unique=True, max_size=12), weight=2)
    def test_defaults_written_out(self, keys: list[tuple[str, configschema.Key]]) -> None:
        """Setting keys to their documented defaults changes nothing."""
        lines = []
        for name, section in _SECTIONS.items():
            lines.append(f"[{name}]")
            lines.extend(f"{k.name} = {k.default}" for s, k in keys if s == name
                         and k in section.keys)
        self.assertEqual(_parse("\n".join(lines)), _parse(""))

    @fuzz(st.sampled_from([k.convert for sec in _SECTIONS.values() for k in sec.keys]),
          _VALUES, weight=3)
    def test_value_parsers_only_value_errors(self, convert: object, value: str) -> None:
        with contextlib.suppress(ValueError):
            convert(value)  # type: ignore[operator]

    @fuzz(st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
          st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1), weight=2)
    def test_uidl_format(self, template: str, uid: int, validity: int) -> None:
        try:
            fmt = uidlformat.UidlFormat(template)
        except ValueError:
            return
        self.assertIsInstance(fmt.format(uid, validity), str)



class ExpansionTests(unittest.TestCase):
    def test_expansion_bounded(self) -> None:
        """$-references that each triple the one before (a "billion laughs" mail.ini) are an
        error naming the key, found fast, in bounded memory (it was 8 s and 80 MB strings in
        every error message)."""
        lines, previous = ["[mail]", "myhostname = " + "a" * 50], "myhostname"
        for key in ["mydomain", "myorigin", "relay_domains", "maillog_file", "dns_resolver",
                    "smtp_sasl_password_maps", "relayhost", "alias_maps", "queue_directory",
                    "smtp_tls_security_level", "inet_interfaces", "mynetworks", "mydestination"]:
            lines.append(f"{key} = ${previous} ${{{previous}}}${previous}")
            previous = key
        with peak_memory() as peak, self.assertRaises(config.ConfigError) as e:
            _parse("\n".join(lines))
        self.assertLess(peak(), 4 * 1024 * 1024)
        self.assertIn("mail.ini: [mail] mydestination: expands to more than 65536 characters",
                      e.exception.errors)
        self.assertLess(max(map(len, e.exception.errors)), 70000)
