"""The ACME service: at start and then daily, is a new certificate due (mailsuite.acme.
certfiles.due)? If so, one issuance (mailsuite.acme.client) in the thread pool, the files
replaced, and the TLS reloaded without a restart: the new certificate serves new connections.
A failure is logged (maillog and twistd log) and tried again after an hour, then two, four...
at most a day later (Let's Encrypt allows 5 failed checks per name and hour).

Where it runs (threat model). In the one-process server, here. With privilege separation
(``mail_owner`` set), in the root master: it alone may write the TLS key, and it hands new
files to the network process through its existing reload path (``MasterService.hup``:
memfds over the channel, wire.NewTLS). The master then parses input from one place only,
the configured ``acme_server``, over HTTPS checked against the system's CAs (or
``acme_ca_file``), as a client it started: nobody on the Internet can connect to it or speak
first. What anyone can send (the CA's validation requests, and everyone else's) reaches the
HTTP responder of the unprivileged network process, which only reads token files from a
directory root owns (beside the TLS files, or acme_challenge_dir; mailsuite.acme.tokens).
A separate ACME child with its own uid was weighed: it would still need root's help to
replace the key, so the master would parse what it hands over (a certificate) anyway, for
a second process to keep.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.acme import certfiles, client
from mailsuite.acme import conf as acme_conf
from mailsuite.acme.resolve import reactor_lookup
from mailsuite.acme.tokens import TokenStore
from mailsuite.mta.dns import MXResolver
from mailsuite.startup import StartupError, unreadable_by
from mailsuite.threads import Blocking

log = Logger()

DAY = 86400.0
FIRST_RETRY = 3600.0


def settings_of(cfg: Any, reactor: Any = None) -> client.Settings:
    """The client's settings; with ``reactor``, acme_server is looked up through
    ``[mail] dns_resolver`` on it (mailsuite.acme.resolve)."""
    lookup = None if reactor is None else reactor_lookup(reactor, cfg.mail.dns_resolver)
    return client.Settings(server=cfg.tls.acme_server, email=cfg.tls.acme_email,
                           ca_file=cfg.tls.acme_ca_file,
                           account_key=acme_conf.account_key_path(cfg),
                           names=tuple(acme_conf.names_of(cfg)), lookup=lookup)


class AcmeService(service.Service):
    """Keeps ``ssl_cert``/``ssl_key`` an ACME certificate for the names, on ``clock``."""

    def __init__(self, cfg: Any, clock: Any, blocking: Blocking, reload: Callable[[], Any],
                 maillog: Any = None,
                 issue: Callable[[client.Settings, TokenStore], client.Issued] = client.issue,
                 resolver_reactor: Any = None,
                 addresses: Callable[[str], defer.Deferred[list[str]]] | None = None) -> None:
        """``resolver_reactor``: where acme_server's name is looked up (None: getaddrinfo);
        ``addresses``: the DNS look-up of the names (None: every name is asked for)."""
        self.settings = settings_of(cfg, resolver_reactor)
        self.addresses = None if cfg.tls.acme_names else addresses  # acme_names: as given
        self.cert_path, self.key_path = cfg.tls.ssl_cert, cfg.tls.ssl_key
        self.renew_before = cfg.tls.acme_renew_before
        self.tokens = TokenStore(acme_conf.challenge_dir(cfg))
        self.state_path = acme_conf.state_path(cfg)
        self.clock, self.blocking, self.reload = clock, blocking, reload
        self.maillog, self.issue = maillog, issue
        self.failures = 0
        self.issued = 0  # certificates installed since start
        self._call: Any = None
        self._busy: defer.Deferred[bool] | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Any:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return None

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(delay, self.check)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    def check(self) -> defer.Deferred[bool]:
        """Renew if due; fires True when a new certificate was installed and reloaded. A
        check while one runs shares its result."""
        if self._busy is not None:
            return self._busy
        d = self._busy = defer.ensureDeferred(self._check())

        def done(result: bool) -> bool:
            self._busy = None
            return result

        return d.addBoth(done)

    async def _names(self) -> list[str]:
        """The names to ask for: myhostname, and those of the others that have an address in
        DNS (one name the CA cannot reach fails the whole order; a left-out one is said)."""
        names = list(self.settings.names)
        if self.addresses is None:
            return names
        kept, left_out = names[:1], list[str]()
        for name in names[1:]:
            try:
                found = await self.addresses(name)
            except defer.CancelledError:
                raise
            except Exception:  # a time-out: left out this time, asked for at the next check
                found = []
            (kept if found else left_out).append(name)
        if left_out:
            self._say(f"warning: {', '.join(left_out)}: no address in DNS, left out of the"
                      " certificate (add A/AAAA records for this host, or set acme_names)")
        return kept

    async def _check(self) -> bool:
        try:
            names = await self._names()
            current = await self.blocking(certfiles.read_cert, self.cert_path)
            state = await self.blocking(certfiles.read_state, self.state_path)
            reason = certfiles.due(current, names, self.now(), self.renew_before) \
                or certfiles.other_server(state, current, self.settings.server)
            if reason is None:
                self.failures = 0
                self._schedule(DAY)
                return False
            self._say(f"requesting a certificate for {', '.join(names)} from"
                      f" {self.settings.server}: {reason}")
            settings = dataclasses.replace(self.settings, names=tuple(names))
            issued = await self.blocking(self.issue, settings, self.tokens)
            await self.blocking(certfiles.install, self.cert_path, self.key_path,
                                issued.fullchain_pem, issued.key_pem)
        except defer.CancelledError:
            raise
        except Exception as e:  # network, CA, files: logged, tried again later
            delay = min(FIRST_RETRY * 2 ** self.failures, DAY)
            self.failures += 1
            self._say(f"warning: no certificate from {self.settings.server}: {_why(e)};"
                      f" trying again in {delay / 3600:g} h", error=True)
            self._schedule(delay)
            return False
        self.failures = 0
        self.issued += 1
        expires = certfiles.expiry(issued.fullchain_pem)
        self._say(f"certificate for {', '.join(names)} installed in {self.cert_path},"
                  f" valid until {expires:%Y-%m-%d %H:%M} UTC")
        await defer.maybeDeferred(self.reload)
        self._schedule(DAY)
        try:
            await self.blocking(certfiles.write_state, self.state_path, self.settings.server,
                                issued.fullchain_pem)
        except OSError as e:  # only a later change of acme_server goes unnoticed
            self._say(f"warning: {self.state_path}: {e.strerror}", error=True)
        return True

    def _say(self, text: str, error: bool = False) -> None:
        (log.error if error else log.info)("{text}", text=text)
        if self.maillog is not None:
            self.maillog.write("acme", text)


def _why(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def add_acme(top: service.MultiService, cfg: Any, reactor: Any, blocking: Blocking,
             reload: Callable[[], Any], maillog: Any = None,
             owner: tuple[int, int] | None = None) -> AcmeService | None:
    """The ACME service under ``top`` when ``[tls] acme = yes`` (tap.py's one line).
    ``owner``: mail_owner's uid and gid when the network process serves the tokens
    (privilege separation): StartupError unless it can read their directory."""
    if not cfg.tls.acme:
        return None
    if owner is not None:
        check_token_dir(cfg, owner)
    if cfg.listen.autoconfig != 80:
        log.warn("[listen] autoconfig = {port}: the CA checks http-01 on port 80; forward"
                 " port 80 there", port=cfg.listen.autoconfig)
    acme = AcmeService(cfg, reactor, blocking, reload, maillog, resolver_reactor=reactor,
                       addresses=MXResolver(cfg.mail.dns_resolver, reactor=reactor).addresses)
    acme.setName("acme")
    acme.setServiceParent(top)
    return acme


def check_token_dir(cfg: Any, owner: tuple[int, int]) -> None:
    """(blocking, at start) Make the token directory and check that a process with
    ``owner``'s rights (the network process) can read it."""
    directory = acme_conf.challenge_dir(cfg)
    try:
        os.close(TokenStore(directory).open_dir())
    except OSError as e:
        raise StartupError(f"[tls] acme_challenge_dir: {directory}: {e.strerror}") from None
    for path, why in unreadable_by([directory], *owner).items():
        raise StartupError(
            f"[tls] acme_challenge_dir: {path}: {why} (the network process, as mail_owner,"
            " serves the http-01 tokens from there: make the directories above it searchable"
            " by mail_owner, or set acme_challenge_dir)")
