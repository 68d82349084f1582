"""``mailsuite config``: the settings mailsuite runs with, as Postfix's ``postconf`` shows
main.cf's::

    mailsuite config [-n | -d] [-C mail.ini] [KEY ...]

One line a key, every section: ``key = value`` for [mail] (postconf's lines), ``section.key =
value`` for the others (``listen.smtp = 25``, ``dkim.example.com = 202612:/etc/...``), so that
each line says where it belongs and ``grep`` keeps the section. Keys sorted in each section,
[mail] first. The value is the effective one: the file's, else the default, with ``$name``
expanded (postconf -x); printed as mail.ini takes it back: a literal ``$`` as ``$$``, a value
continued on indented lines joined on one line, booleans as ``yes``/``no``, other values
(sizes, durations, lists) as written.

- ``-n``: only the keys the file sets (postconf -n);
- ``-d``: the defaults, as if the file set nothing (postconf -d; the file is not read);
- ``KEY``: a [mail] key (``myhostname``), ``section.key`` or ``section/key`` (``tls.ssl``), or a
  section (``listen``: its keys). An unknown one is ``mailsuite config: warning: KEY: unknown
  parameter`` on stderr (postconf's words), the others are still printed, exit status 64.

A file mailsuite refuses gives the usual errors (file, section and key) and status 78.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import TextIO

from mailsuite.cmdbase import EX_CONFIG, EX_OK, EX_USAGE, ArgParser, Fatal, load, parse_args
from mailsuite.config import setting_texts
from mailsuite.configschema import SECTIONS
from mailsuite.configvalues import parse_bool

Texts = dict[str, dict[str, tuple[str, bool]]]


def parser(prog: str = "mailsuite config") -> argparse.ArgumentParser:
    p = ArgParser(prog=prog, description="Print the settings of mail.ini after defaults and"
                  " $name expansion, one line a key: 'key = value' for [mail],"
                  " 'section.key = value' for the other sections (as postconf).")
    which = p.add_mutually_exclusive_group()
    which.add_argument("-n", action="store_true", help="only the keys the file sets")
    which.add_argument("-d", action="store_true", help="the defaults (the file is not read)")
    p.add_argument("keys", nargs="*", metavar="KEY", help="a [mail] key, section.key,"
                   " section/key, or a section name; default: every key")
    p.add_argument("-C", "--config", help="mail.ini (else $MAILSUITE_CONFIG, else"
                   " /etc/mailsuite/mail.ini)")
    return p


def effective(config: str | None, defaults: bool) -> Texts:
    """The texts of mail.ini's settings (mailsuite.config.setting_texts), once the file is
    accepted; the defaults alone with ``defaults``."""
    if defaults:
        return setting_texts("", "(defaults)", defaults=True)
    path = load(config).path  # the usual errors, EX_CONFIG
    try:
        with open(path, encoding="utf-8-sig") as f:
            return setting_texts(f.read(), path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # changed since load() read it
        raise Fatal(EX_CONFIG, f"{path}: {e}") from e


def name_of(section: str, key: str) -> str:
    return key if section == "mail" else f"{section}.{key}"


def shown(section: str, key: str, value: str) -> str:
    """One line as mail.ini takes the value back."""
    if any(k.name == key and k.convert is parse_bool for k in SECTIONS[section].keys):
        value = "yes" if parse_bool(value) else "no"
    return f"{name_of(section, key)} = {value.replace('$', '$$')}".rstrip()


def select(texts: Texts, wanted: str) -> list[tuple[str, str]] | None:
    """The (section, key) pairs that ``wanted`` names; None if none."""
    if wanted in texts:
        return [(wanted, key) for key in sorted(texts[wanted])]
    section, sep, key = wanted.replace("/", ".").partition(".")
    if not sep:
        section, key = "mail", wanted
    if section in texts and key in texts[section]:
        return [(section, key)]
    return None


def unknown(texts: Texts, wanted: str) -> str:
    """postconf's warning, with the key's right name when it is in another section."""
    every = sorted({name_of(s, k) for s, keys in texts.items() for k in keys})
    key = wanted.replace("/", ".").rpartition(".")[2]
    close = [name for name in every if name.endswith(f".{key}") or name == key]
    close = close or difflib.get_close_matches(wanted, every, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"mailsuite config: warning: {wanted}: unknown parameter{hint}"


def main(argv: list[str], out: TextIO, err: TextIO | None = None) -> int:
    """``mailsuite config ...``: its exit status."""
    args = parse_args(parser(), argv, out)
    if isinstance(args, int):
        return args
    texts = effective(args.config, args.d)
    status = EX_OK
    if args.keys:
        pairs: list[tuple[str, str]] = []
        for wanted in args.keys:
            found = select(texts, wanted)
            if found is None:
                print(unknown(texts, wanted), file=sys.stderr if err is None else err)
                status = EX_USAGE
            else:
                pairs += found
    else:
        pairs = [(s, k) for s in texts for k in sorted(texts[s])]
    for section, key in pairs:
        value, in_file = texts[section][key]
        if in_file or not args.n:
            print(shown(section, key, value), file=out)
    return status
