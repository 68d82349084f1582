"""``kill -HUP`` in the master of privilege separation: mail.ini read again and checked (as
at start, also that mail_owner can read what the network process reads); the keys that need
a restart kept (mailsuite.reload); new listeners bound here, as root, and handed over
(wire.Listen); the new configuration sent to the network process (wire.Reload), which swaps
its parts for new sessions; listeners no longer configured closed once it has; the agents of
the old configuration set aside (they finish their sessions and exit when idle: the next
session of their account gets a new agent, with the new configuration).

A file that does not load, a port that cannot be bound, a network process that could not
apply it: refused, logged (file, section, key), and the running configuration stays.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mailsuite import startup
from mailsuite.config import Config
from mailsuite.filter import check_at_start as filter_check_at_start
from mailsuite.mta import tlspolicy
from mailsuite.mta.quota import check_at_start as check_quota_rules
from mailsuite.mta.virtual import VirtualAliases
from mailsuite.privsep import wire
from mailsuite.privsep.ports import held_socket
from mailsuite.reload import (
    check_or_refuse,
    keep_restart_keys,
    listener_names,
    moved,
    note_restart,
    refused,
    reloaded,
)
from mailsuite.smtp.restrictions import check_tables as check_restriction_tables

log = Logger()


def owner_checks(cfg: Config, owner: tuple[int, int]) -> None:
    """privsep: what the other processes will read, checked by the master before it starts
    them (a child could only fail later, or hang): it parses, and mail_owner (or the users)
    may read it (ConfigError)."""
    filter_check_at_start(cfg, owner)  # the stages' files, before the network process
    check_quota_rules(cfg.mailbox, agents=True)  # quota_rule_file: parses, users read it
    startup.check_default_privs(cfg)
    check_restriction_tables(cfg.mail, owner)  # the network process reads them, could not say
    tlspolicy.check_readable(cfg, owner)  # the network process reads them too
    VirtualAliases.check_at_start(cfg.mail, owner)  # virtual_alias_maps: and these


class MasterReload:
    """The master's part of a reload (``master.hup`` calls it). ``check(path)``: the new
    (Config, TLS) as tap checks them at start; ``listeners_of(cfg, tls)``: the master's
    listener services of a configuration, not bound; ``bound``: the running ones."""

    def __init__(self, master: Any, bound: Any, check: Callable[[str], tuple[Config, Any]],
                 listeners_of: Callable[[Config, Any], Any]) -> None:
        self.master, self.bound = master, bound
        self.check, self.listeners_of = check, listeners_of

    def _checked(self) -> tuple[Config, Any]:
        cfg, tls = self.check(self.master.cfg.path)
        owner_checks(cfg, self.master.owner)
        return cfg, tls

    def __call__(self) -> None:
        try:
            self._reload()
        except Exception:  # a bug: logged, and the HUP's other work (TLS) still done
            log.failure("reload of {path} failed", path=self.master.cfg.path)
            refused(self.master.maillog, [f"{self.master.cfg.path}: the reload failed"
                                          " (see the twistd log)"])

    def _reload(self) -> None:
        m = self.master
        path = m.cfg.path
        got = check_or_refuse(m.maillog, path, self._checked)
        if got is None:
            return
        merged, keys = keep_restart_keys(m.cfg, got[0])
        note_restart(m.maillog, path, keys)
        try:
            wanted = listener_names(self.listeners_of(merged, got[1]))
        except startup.StartupError as e:  # a host name of inet_interfaces that does not resolve
            refused(m.maillog, [f"{path}: {e}"])
            return
        self._apply(path, merged, wanted)

    def _apply(self, path: str, merged: Config, wanted: dict[str, Any]) -> None:
        """Bind the listeners that are new or moved, then hand everything over."""
        m = self.master
        kept = {name for name in m.listeners
                if name in wanted and not moved(name, m.cfg, merged)}
        fresh: dict[str, Any] = {}
        for name, svc in wanted.items():
            if name in kept:
                continue
            try:
                svc.privilegedStartService()
            except CannotListenError as e:
                self._close(list(fresh.values()))
                refused(m.maillog, [f"{path}: {startup.listen_failure(name, e)}"])
                return
            fresh[name] = svc
        gone = [svc for svc in self.bound if svc.name and "@" in svc.name
                and svc.name not in kept]
        before = m.cfg, m.tls_files, dict(m.listeners)
        m.cfg = merged
        if m.tls_files is not None:
            m.tls_files = (merged.tls.ssl_cert, merged.tls.ssl_key)
        for svc in gone:
            svc.disownServiceParent()  # (closed once the network process has let go)
            del m.listeners[svc.name]
        for name, svc in fresh.items():
            m.listeners[name] = held_socket(svc)
            svc.setServiceParent(self.bound)
        if m.net is None:  # (being started again: it gets the new configuration)
            self._done(path, gone)
            return
        d = self._send(m.net, merged, fresh)

        def failed(failure: Any) -> None:
            m.cfg, m.tls_files, m.listeners = before
            self._close(list(fresh.values()))
            for svc in gone:
                svc.setServiceParent(self.bound)
            refused(m.maillog, [f"{path}: the network process did not apply it:"
                                f" {failure.getErrorMessage()}"])

        d.addCallbacks(lambda _: self._done(path, gone), failed)

    def _send(self, net: Any, cfg: Config, fresh: dict[str, Any]) -> Any:
        m = self.master
        for name in fresh:
            net.callRemote(wire.Listen, name=name, fd=m.listeners[name]).addErrback(
                lambda f: log.failure("listener not handed over", f))
        fd = os.memfd_create("cfg", os.MFD_CLOEXEC)
        try:
            os.write(fd, pickle.dumps(cfg))
        except OSError:
            os.close(fd)
            raise
        d = net.callRemote(wire.Reload, cfg=fd)

        def close(result: Any) -> Any:
            os.close(fd)
            return result

        return d.addBoth(close)

    def _done(self, path: str, gone: list[Any]) -> None:
        """Applied: the listeners no longer configured closed, the old agents set aside."""
        m = self.master
        self._close(gone)
        for name, channel in list(m.agents.items()):
            m.set_aside(name, channel)
        reloaded(m.maillog, path)

    def _close(self, services: list[Any]) -> None:
        for svc in services:
            if svc.parent is self.bound:
                svc.disownServiceParent()
            port = svc._waitingForPort.result
            port.stopListening()
