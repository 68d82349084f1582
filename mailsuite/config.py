"""Reading and checking ``mail.ini``, the one configuration file of mailsuite.

The file is INI with the knob names of Postfix's main.cf and Dovecot's dovecot.conf (see the
contract in DESIGN.md and the shipped ``etc/mail.ini``). Syntax:

- ``[section]`` headers, ``key = value`` lines; a line starting with whitespace continues the
  value of the line before it (as in main.cf).
- ``#`` and ``;`` start a comment at the beginning of a line, and also after whitespace inside a
  line (``smtps = no   # until TLS lands``); main.cf has no inline comments, we do.
- ``$name`` and ``${name}`` expand to the value of key ``name`` of ``[mail]`` (recursively, in
  every section); ``$$`` is a literal ``$``.

Every problem (syntax, unknown section or key, bad value, expansion loop) is collected and raised
at once as one :class:`ConfigError`, each line shaped ``FILE: [section] key: message``.
:func:`parse_config` is pure (it asks ``hostname()`` only when ``myhostname`` is not set);
:func:`load_config` reads the file; :func:`config_path` locates it (the same rule for twistd and
every command). The sections and keys are mailsuite.configschema's, the converter of each
key's value is in mailsuite.configvalues.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailsuite.acme import conf as acme_conf
from mailsuite.configschema import (
    SECTIONS,
    SERVICES,
    Section,
    AuthConfig,
    Config,
    Default,
    ImapConfig,
    Key,
    ListenConfig,
    MailboxConfig,
    MailConfig,
    Pop3Config,
    TLSConfig,
)
from mailsuite.configvalues import Problems
from mailsuite.net import default_hostname

__all__ = [
    "DEFAULT_CONFIG", "SERVICES", "AuthConfig", "Config", "ConfigError", "ImapConfig",
    "ListenConfig", "MailConfig", "MailboxConfig", "Pop3Config", "TLSConfig", "config_path",
    "load_config", "parse_config",
]

DEFAULT_CONFIG = "/etc/mailsuite/mail.ini"


class ConfigError(Exception):
    """Everything wrong with one configuration file; ``str()`` gives one error per line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------------------------------------
# Reading: text -> {section: {key: _Setting}}, then $-expansion, conversion and checks.

@dataclass
class _Setting:
    value: str
    line: int


def _read_ini(text: str, filename: str, errors: list[str]) -> dict[str, dict[str, _Setting]]:
    sections: dict[str, dict[str, _Setting]] = {}
    current: dict[str, _Setting] | None = None
    where = ""
    last: _Setting | None = None  # the setting an indented line continues
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)[#;].*", "", raw).strip()
        if not line:
            continue
        if raw[0].isspace():
            if last is None:
                errors.append(f"{filename}: {where}line {number}: indented line continues"
                              " nothing (lines starting with whitespace continue a value)")
            else:
                last.value = f"{last.value} {line}"
            continue
        last = None
        header = re.fullmatch(r"\[\s*([^\]\s]+)\s*\]", line)
        if header:
            where = f"[{header.group(1)}] "
            current = sections.setdefault(header.group(1), {})
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals or not key or current is None:
            problem = "is outside any [section]" if equals and key else (
                "is not 'key = value', '[section]' or a comment")
            errors.append(f"{filename}: {where}line {number}: {line!r} {problem}")
        elif key in current:
            errors.append(f"{filename}: {where}{key}: set twice (lines {current[key].line}"
                          f" and {number})")
        else:
            last = current[key] = _Setting(value, number)
    return sections


#: the longest a value may be once its $-references are expanded
MAX_EXPANDED = 65536
_DOLLAR = re.compile(r"\$(?:\{(\w+)\}|(\w+)|(\$)|)")


class _Expander:
    """``$name`` / ``${name}`` -> the (expanded) value of ``name`` in [mail]."""

    def __init__(self, mail: dict[str, Default]) -> None:
        self.mail = mail
        self.used: set[str] = set()  # the [mail] keys looked up since the caller last cleared it

    def value(self, name: str, stack: tuple[str, ...] = ()) -> str:
        if name in stack:
            raise ValueError("expansion loop: " + " -> ".join(f"${n}" for n in (*stack, name)))
        if name not in self.mail:
            raise ValueError(f"${name}: no such key in [mail]")
        self.used.add(name)
        raw = self.mail[name]
        stack += (name,)
        if callable(raw):
            raw = raw(lambda other: self.value(other, stack))
        return self.expand(raw or "", stack)

    def expand(self, text: str, stack: tuple[str, ...] = ()) -> str:
        def substitute(match: re.Match[str]) -> str:
            if match.group(3):
                return "$"
            name = match.group(1) or match.group(2)
            if not name:
                raise ValueError("a $ must be followed by a key of [mail] ($$ is a literal $)")
            return self.value(name, stack)

        value = _DOLLAR.sub(substitute, text)
        if len(value) > MAX_EXPANDED:  # references that double at each key: 2^30 bytes
            raise ValueError(f"expands to more than {MAX_EXPANDED} characters")
        return value


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown {kind}" + (f" (did you mean {close[0]}?)" if close else "")


def _misplaced(name: str, section_name: str, names: list[str]) -> str:
    """For a key not in its section: the section it belongs in, else a close match."""
    for other, section in SECTIONS.items():
        if other != section_name and any(key.name == name for key in section.keys):
            return f"belongs in [{other}]"
    return _unknown("key", name, names)


def _mail_expander(given: dict[str, dict[str, _Setting]], hostname: Callable[[], str]
                   ) -> _Expander:
    """$name over [mail]: the file's values, else the defaults (myhostname: ``hostname()``)."""
    mail: dict[str, Default] = {key.name: key.default for key in SECTIONS["mail"].keys}
    mail["myhostname"] = lambda get: hostname()
    mail.update({k: s.value for k, s in given.get("mail", {}).items() if k in mail})
    return _Expander(mail)


def _expanded(expander: _Expander, section_name: str, key: Key, setting: _Setting | None
              ) -> str:
    """The text of a key after $-expansion: the file's value, else the default."""
    if section_name == "mail":
        return expander.value(key.name)
    raw = setting.value if setting else key.default
    assert isinstance(raw, str)
    return expander.expand(raw)


def parse_config(
    text: str, filename: str, *, hostname: Callable[[], str] = default_hostname
) -> Config:
    """Parse and check the text of a mail.ini; raise ConfigError listing every problem.

    ``hostname()`` gives myhostname's default (the host's FQDN) when the file does not set it.
    """
    errors: list[str] = []
    given = _read_ini(text, filename, errors)
    for name in given:
        if name not in SECTIONS:
            errors.append(f"{filename}: [{name}]: {_unknown('section', name, list(SECTIONS))}")

    expander = _mail_expander(given, hostname)

    built: dict[str, Any] = {}
    failed: set[str] = set()  # [mail] keys already reported
    for section_name, section in SECTIONS.items():
        settings = given.get(section_name, {})
        if section.entry is not None:
            built[section_name] = _free_section(filename, section_name, section, settings,
                                                expander, errors)
            continue
        names = [key.name for key in section.keys]
        for name in settings:
            if name not in names:
                errors.append(f"{filename}: [{section_name}] {name}: "
                              + _misplaced(name, section_name, names))
        values: dict[str, Any] = {}
        for key in section.keys:
            setting = settings.get(key.name)
            expander.used = set()
            try:
                values[key.name] = key.convert(_expanded(expander, section_name, key, setting))
            except ValueError as e:
                if section_name == "mail":
                    failed.add(key.name)
                if setting is None and expander.used & failed - {key.name}:
                    continue  # a default built from a bad key: that key's error says it all
                origin = "" if setting else " (this is the default; set the key to change it)"
                messages = e.messages if isinstance(e, Problems) else [str(e)]
                errors.extend(f"{filename}: [{section_name}] {key.name}: {message}{origin}"
                              for message in messages)
        if len(values) == len(section.keys):
            built[section_name] = section.build(**values)
    if "listen" in built and "tls" in built:
        errors.extend(_tls_listener_errors(filename, built["listen"], built["tls"]))
    if errors:
        raise ConfigError(errors)
    return Config(path=filename, **built)


def _free_section(filename: str, section_name: str, section: Section,
                  settings: dict[str, _Setting], expander: _Expander, errors: list[str]) -> Any:
    """A section of free names ([dkim]: one line a domain): each line through
    ``section.entry``; a bad one, or two lines naming one item, is an error naming its key."""
    assert section.entry is not None
    items: dict[str, Any] = {}
    first: dict[str, str] = {}
    for key, setting in settings.items():
        try:
            name, item = section.entry(key, expander.expand(setting.value))
        except ValueError as e:
            errors.append(f"{filename}: [{section_name}] {key}: {e}")
            continue
        if name in items:
            errors.append(f"{filename}: [{section_name}] {key}: names {name} as"
                          f" {first[name]} does (line {settings[first[name]].line})")
            continue
        items[name], first[name] = item, key
    return section.build(items)


def _tls_listener_errors(filename: str, listen: ListenConfig, tls: TLSConfig) -> list[str]:
    """The implicit-TLS ports cannot run with ``ssl = no``; ACME needs TLS and port 80."""
    acme = acme_conf.config_errors(filename, listen, tls)
    if tls.ssl != "no":
        return acme
    return acme + [
        f"{filename}: [listen] {name}: is TLS from the first byte but [tls] ssl = no;"
        f" set ssl = yes, or {name} = no"
        for name in ("smtps", "pop3s", "imaps", "autoconfigs")
        if getattr(listen, name) is not None]


def setting_texts(text: str, filename: str, *, defaults: bool = False,
                  hostname: Callable[[], str] = default_hostname
                  ) -> dict[str, dict[str, tuple[str, bool]]]:
    """What ``mailsuite config`` prints: ``{section: {key: (value, set by the file)}}``, each
    value the text after $-expansion (of the default when the file does not set it; of every
    default when ``defaults``); a section of free names gives the file's lines. For a text that
    parse_config accepted (else the first bad expansion raises ValueError)."""
    given = {} if defaults else _read_ini(text, filename, [])
    expander = _mail_expander(given, hostname)
    texts: dict[str, dict[str, tuple[str, bool]]] = {}
    for section_name, section in SECTIONS.items():
        settings = given.get(section_name, {})
        if section.entry is not None:
            texts[section_name] = {k: (expander.expand(s.value), True)
                                   for k, s in settings.items()}
            continue
        texts[section_name] = {}
        for key in section.keys:
            setting = settings.get(key.name)
            texts[section_name][key.name] = (_expanded(expander, section_name, key, setting),
                                             setting is not None)
    return texts


def config_path(explicit: str | None) -> str:
    """Where mail.ini is: --config, else $MAILSUITE_CONFIG, else /etc/mailsuite/mail.ini."""
    return explicit or os.environ.get("MAILSUITE_CONFIG") or DEFAULT_CONFIG


def load_config(path: str) -> Config:
    """Read and parse the file at ``path``; an unreadable file is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from None
    return parse_config(text, path)
