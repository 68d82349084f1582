"""Live reload of mail.ini (``kill -HUP``, ``systemctl reload``), as ``postfix reload``.

Sessions in progress finish with the configuration they started with; new ones get the new
one. The process that holds the protocol parts (the network process, or the one process when
``[mail] mail_owner`` is empty) builds them again from the new configuration with tap's own
assembly, on a scratch service tree that is never started, and swaps them in:

- each listening port keeps its socket and gets the new factory (Twisted's Port asks its
  ``factory`` for every connection it accepts: a connection already open keeps its protocol,
  and with it the factory, restrictions, filters, tables and limits it was made with);
- a listener that is new (a changed ``[listen]`` port or ``inet_interfaces``) is bound first
  (one process: here; privsep: by the master, which hands the socket over), one that is gone
  is closed after the swap;
- the queue manager stays the one that runs (only one may: it owns the queue files) and gets
  the new relay (relayhost, TLS policy, SASL passwords), settings and local delivery;
- the pickup submits through the new pipeline; the AuthPolicy and Limits objects stay (their
  counts of failures and open sessions hold across the reload) with the new knobs.

What cannot change while running keeps its old value, logged as Dovecot does
(``KEY: changed; needs a restart``): see RESTART. A file that does not load is refused with
ConfigError's lines (file, section, key), logged; the running configuration stays.

Hand-written: Twisted has no notion of a configuration reload, and the parts are ours.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from twisted.application import service, strports
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mailsuite import startup
from mailsuite.config import Config, ConfigError
from mailsuite.startup import StartupError, step

log = Logger()

#: keys that need a restart, with why: the process structure (mail_owner), files opened or
#: locked at start (queue_directory, maillog_file), the spool the agents and the clean-up
#: know (mail_location), the password database and its cache (held by the master), and the
#: TLS-RPT report service (made once, with its store in the queue directory)
RESTART: dict[str, tuple[str, ...]] = {
    "mail": ("mail_owner", "queue_directory", "maillog_file", "smtp_tlsrpt_enable",
             "tlsrpt_organization_name", "tlsrpt_contact_info", "tlsrpt_sender_address"),
    "mailbox": ("mail_location",),
    "auth": ("passdb", "passwd_file", "shadow_file", "pam_service", "first_valid_uid",
             "auth_cache_size", "auth_cache_ttl", "auth_cache_negative_ttl"),
}


def changed(old: Config, new: Config) -> list[tuple[str, str]]:
    """The (section, key) pairs whose value differs (key '' for a section compared whole)."""
    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(old):
        if f.name == "path":
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before) and type(before) is type(after):
            out.extend((f.name, k.name) for k in dataclasses.fields(before)
                       if getattr(before, k.name) != getattr(after, k.name))
        elif before != after:
            out.append((f.name, ""))
    return out


def needs_restart(section: str, key: str, old: Config, new: Config) -> bool:
    """Whether a changed key cannot be applied live: RESTART's, and ``[tls] ssl`` turned on
    or off (the TLS context is made at start; yes <-> required is only a policy)."""
    if section == "tls" and key == "ssl":
        return (old.tls.ssl == "no") != (new.tls.ssl == "no")
    return key in RESTART.get(section, ())


def keep_restart_keys(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the keys that need a restart at their running values, and those keys
    (``[section] key``) that the file changed."""
    kept: dict[str, dict[str, Any]] = defaultdict(dict)
    for section, key in changed(old, new):
        if needs_restart(section, key, old, new):
            kept[section][key] = getattr(getattr(old, section), key)
    merged = dataclasses.replace(new, **{
        section: dataclasses.replace(getattr(new, section), **keys)
        for section, keys in kept.items()})
    return merged, [f"[{s}] {k}" for s, keys in kept.items() for k in keys]


def warning(text: str) -> None:
    """A warning of the checks at reload (e.g. smtp_tls_policy_maps'), for twistd's log."""
    log.warn("{text}", text=text)


def note_restart(maillog: Any, path: str, keys: list[str]) -> None:
    for key in keys:
        text = f"{path}: {key}: changed; needs a restart"
        maillog.write("master", f"warning: {text}")
        log.warn("{text}", text=text)


def refused(maillog: Any, errors: list[str]) -> None:
    """A reload that did not happen: why (ConfigError's lines), in the maillog and twistd's."""
    for error in errors:
        maillog.write("master", f"error: {error}")
        log.error("reload refused: {error}", error=error)
    maillog.write("master", "warning: reload refused: the running configuration stays")


def reloaded(maillog: Any, path: str) -> None:
    maillog.write("master", f"reload -- configuration {path}")  # Postfix's master's line
    log.info("reloaded {path}", path=path)


def listener_names(top: service.MultiService) -> dict[str, Any]:
    """The listening services of a tree, by name (``smtp@127.0.0.1``, ``lmtp@/path``)."""
    return {svc.name: svc for svc in top if svc.name and "@" in svc.name}


def moved(name: str, old: Config, new: Config) -> bool:
    """Whether the listener ``name`` (named by service and address) has another port."""
    kind = name.partition("@")[0]
    return bool(getattr(old.listen, kind) != getattr(new.listen, kind))


def port_of(svc: Any) -> Any:
    """The listening port of a running listener service (AdoptedPort or an endpoint's)."""
    if hasattr(svc, "_waitingForPort"):
        return svc._waitingForPort.result
    return svc.port


class Reloader:
    """Swaps the protocol parts of a running tree ``top`` for parts of a new configuration.

    ``assemble(top, parts)``: tap's; ``parts``: the tap.Parts it was run with; ``fixup``:
    what the network process sets on a LocalDelivery after assembly (netproc)."""

    def __init__(self, top: service.MultiService, parts: Any,
                 assemble: Callable[[Any, Any], Any]) -> None:
        self.top, self.parts, self.assemble = top, parts, assemble
        self.fixup: Callable[[Any, Config], None] | None = None

    @property
    def cfg(self) -> Config:
        return self.parts.cfg  # type: ignore[no-any-return]

    def apply(self, cfg: Config, bind: Callable[[str, Any], service.Service]) -> None:
        """New sessions get ``cfg``'s parts. ``bind(name, factory)``: a bound, not yet started
        service for a listener that is not running. Raises (nothing swapped) on a failure."""
        parts = dataclasses.replace(self.parts, cfg=cfg, after=None,
                                    listeners=defaultdict(lambda: -1))
        scratch = service.MultiService()  # never started: its AdoptedPorts bind nothing
        delivery = self.assemble(scratch, parts)
        if self.fixup is not None:
            self.fixup(delivery, cfg)
        new = listener_names(scratch)
        running = listener_names(self.top)
        kept = {name for name in running if name in new and not moved(name, self.cfg, cfg)}
        donors = [_inner(svc.factory) for svc in running.values()]
        for svc in new.values():  # every door's state is shared: moved doors get it too
            for donor in donors:
                _keep_state(donor, _inner(svc.factory))
        added: list[service.Service] = []
        try:
            for name in new:
                if name not in kept:
                    added.append(bind(name, new[name].factory))
        except BaseException:
            for svc in added:
                svc.stopService()
            raise
        self._swap_queue(scratch, delivery)
        self._swap_pickup(scratch)
        for name, svc in running.items():
            if name in kept:
                self._swap_factory(svc, new[name].factory)
            else:
                svc.disownServiceParent()  # stops listening; its sessions go on
        for svc in added:
            svc.setServiceParent(self.top)  # started: the top runs
        self.parts = dataclasses.replace(self.parts, cfg=cfg)

    def _swap_factory(self, svc: Any, factory: Any) -> None:
        old = svc.factory
        port = port_of(svc)
        factory.doStart()
        svc.factory = port.factory = factory
        old.doStop()

    def _swap_queue(self, scratch: service.MultiService, delivery: Any) -> None:
        running = self.top.getServiceNamed("qmgr").queue
        built = scratch.getServiceNamed("qmgr").queue
        running.relay, running.local = built.relay, delivery
        if built.settings.concurrency != running.settings.concurrency:
            running._slots = built._slots  # (a slot taken is given back to the one it came from)
        running.settings = built.settings
        delivery.queue = running

    def _swap_pickup(self, scratch: service.MultiService) -> None:
        running = self.top.getServiceNamed("pickup").call[0].__self__
        running.submit = scratch.getServiceNamed("pickup").call[0].__self__.submit

    def reread(self, check: Callable[[str], Config]) -> None:
        """One process, ``kill -HUP``: ``check(path)`` (tap.checked_config) reads the file
        again; applied, or refused with the running configuration kept."""
        maillog, path = self.parts.maillog, self.cfg.path
        new = check_or_refuse(maillog, path, lambda: check(path))
        if new is None:
            return
        merged, keys = keep_restart_keys(self.cfg, new)
        note_restart(maillog, path, keys)
        try:
            self.apply(merged, functools.partial(bind_local, merged, self.parts.reactor))
        except ConfigError as e:
            refused(maillog, e.errors)
            return
        except (StartupError, OSError) as e:
            refused(maillog, [f"{path}: {e}"])
            return
        except Exception:  # a bug: the running parts stay (nothing was swapped)
            log.failure("reload of {path} failed", path=path)
            refused(maillog, [f"{path}: the reload failed (see the twistd log)"])
            return
        tls = self.parts.tls
        if tls is not None:  # the TLS reload of the same HUP reads them (tap._on_hup)
            tls.cert_path, tls.key_path = merged.tls.ssl_cert, merged.tls.ssl_key
        reloaded(maillog, path)


def _inner(factory: Any) -> Any:
    """The protocol factory under implicit TLS's wrapper."""
    return getattr(factory, "wrappedFactory", factory)


def _keep_state(old: Any, new: Any) -> None:
    """The state shared by the sessions of ``old`` goes on in ``new``: its AuthPolicy and
    Limits (their counts; with ``new``'s knobs), IMAP's \\Recent tracker and IDLE poller (one
    message is recent in one session only), postscreen's cache of clients that passed."""
    for shared in ("recent", "idle_poller"):
        if hasattr(old, shared) and hasattr(new, shared):
            setattr(new, shared, getattr(old, shared))
    door, fresh_door = getattr(old, "front_door", None), getattr(new, "front_door", None)
    if door is not None and fresh_door is not None:
        fresh_door._passed = door._passed
    policy, fresh = getattr(old, "policy", None), getattr(new, "policy", None)
    if policy is not None and fresh is not None and policy is not fresh:
        for knob in ("failure_delay", "max_failures", "block_time", "trusted", "passdb"):
            setattr(policy, knob, getattr(fresh, knob))
        new.policy = policy
    limits, made = getattr(old, "limits", None), getattr(new, "limits", None)
    if limits is not None and made is not None and limits is not made:
        limits.exceptions = made.exceptions
        if made.anvil.time_unit != limits.anvil.time_unit:
            limits.anvil = made.anvil
        new.limits = limits


def check_or_refuse(maillog: Any, path: str, check: Callable[[], Any]) -> Any:
    """``check()``'s result; None (refused, logged) on a ConfigError, or a StartupError or
    OSError of a file it names (as at start: what mail_owner cannot read, say)."""
    try:
        return check()
    except ConfigError as e:
        refused(maillog, e.errors)
    except (StartupError, OSError) as e:
        text = str(e) if isinstance(e, StartupError) else startup.describe_os_error(e)
        refused(maillog, [text if text.startswith(path) else f"{path}: {text}"])
    return None


def bind_local(cfg: Config, reactor: Any, name: str, factory: Any) -> service.Service:
    """One process: the listener ``name`` (``imap@127.0.0.1``, ``lmtp@/path``) of ``cfg``,
    bound now (a port in use is a StartupError naming it), not started."""
    kind, _, address = name.partition("@")
    port = getattr(cfg.listen, kind)
    if isinstance(port, str):  # lmtp on a unix socket (as tap._unix_endpoint)
        with step(f"cannot listen on unix socket {port} ({kind})"):
            os.makedirs(os.path.dirname(port), exist_ok=True)
        startup.remove_stale_socket(port, kind)
        endpoint = f"unix:{port.replace(':', chr(92) + ':')}:mode=666:lockfile=0"
    else:
        endpoint = f"tcp:{port}:interface={address.replace(':', chr(92) + ':')}"
    svc = strports.service(endpoint, factory, reactor)
    svc.setName(name)
    try:
        svc.privilegedStartService()
    except CannotListenError as e:
        raise StartupError(startup.listen_failure(name, e)) from None
    return svc
