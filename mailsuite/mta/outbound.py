"""Assembling the outbound side from mail.ini (tap.py calls these; nothing here binds).

- :func:`build_queue`: the queue of queue_directory with its SMTP client (MX or relayhost),
  its TLS policy (tlspolicy: levels, policy maps, DANE), MTA-STS (:func:`build_mta_sts`) and
  the TLS-RPT store (:func:`tls_report_store`) the client counts its sessions in
  (mailsuite.mta.stsroute joins them);
- :func:`build_tls_reports` (:func:`add_tls_reports`: under a parent service): with
  ``smtp_tlsrpt_enable = yes``, the daily report service that sends through ``queue`` the
  counts of the queue's store (``queue_directory/tlsrpt/``);
- :func:`build_mta_sts`: with ``smtp_mta_sts_enable = yes`` (the default), the policy source
  for outbound mail (:meth:`MtaSts.policy_for`), its cache in ``queue_directory/mta-sts/``,
  policies fetched over HTTPS through ``dns_resolver``, verified against the system CAs plus
  ``smtp_tls_CAfile``; failed fetches counted for TLS-RPT when a store is given.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from mailsuite.config import Config
from mailsuite.maillog import MailLog
from mailsuite.mta import tlspolicy
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.mta.dns import MXResolver
from mailsuite.mta.mtastscache import MtaSts, cache_path
from mailsuite.mta.mtastsfetch import PolicyFetcher
from mailsuite.mta.queue import Queue, QueueSettings
from mailsuite.mta.queuefile import QueueDirectory
from mailsuite.mta.relay import Relay, load_password_map
from mailsuite.mta.tlsrpt import TLSReportStore, store_path, sts_fetch_reporter
from mailsuite.mta.tlsrptmail import ReportSettings, TLSReportService
from mailsuite.threads import Blocking


def build_queue(cfg: Config, delivery: LocalDelivery, maillog: MailLog, reactor: Any,
                blocking: Blocking) -> Queue:
    """The outbound queue of queue_directory with its SMTP client (MX or relayhost)."""
    mail = cfg.mail
    credentials = load_password_map(cfg)
    store = tls_report_store(cfg, reactor, blocking)
    relay = Relay(
        MXResolver(mail.dns_resolver, reactor=reactor),
        mail.myhostname,
        reactor,
        port=mail.smtp_port,
        relayhost=mail.relayhost,
        credentials=credentials,
        tls=tlspolicy.from_config(cfg, reactor, lambda text: maillog.write("smtp", text)),
        mta_sts=build_mta_sts(cfg, reactor, blocking, store),
        tls_reports=store,
    )
    return Queue(QueueDirectory(mail.queue_directory), delivery, relay, maillog, reactor,
                 QueueSettings.from_config(mail), blocking)


def tls_report_store(cfg: Config, reactor: Any, blocking: Blocking) -> TLSReportStore | None:
    """The TLS-RPT counts, None when ``smtp_tlsrpt_enable = no``."""
    if not cfg.mail.smtp_tlsrpt_enable:
        return None
    return TLSReportStore(store_path(cfg.mail.queue_directory), reactor, blocking)


def build_tls_reports(cfg: Config, reactor: Any, blocking: Blocking,
                      queue: Any) -> TLSReportService | None:
    """The TLS-RPT service of ``queue``'s store (a new one when its client has none), None
    when reporting is off."""
    mail = cfg.mail
    if not mail.smtp_tlsrpt_enable:
        return None
    store = getattr(getattr(queue, "relay", None), "tls_reports", None)
    if not isinstance(store, TLSReportStore):
        store = TLSReportStore(store_path(mail.queue_directory), reactor, blocking)
    settings = ReportSettings(mail.tlsrpt_organization_name, mail.tlsrpt_contact_info,
                              mail.mydomain, mail.tlsrpt_sender_address, mail.myhostname)
    names = MXResolver(mail.dns_resolver, reactor=reactor)
    report_service = TLSReportService(store, names, queue, reactor, settings)
    report_service.setName("tlsrpt")
    return report_service


def add_tls_reports(parent: MultiService, cfg: Config, reactor: Any, blocking: Blocking,
                    queue: Any) -> TLSReportService | None:
    """build_tls_reports, started with ``parent`` (found there by the name ``tlsrpt``)."""
    reports = build_tls_reports(cfg, reactor, blocking, queue)
    if reports is not None:
        reports.setServiceParent(parent)
    return reports


def build_mta_sts(cfg: Config, reactor: Any, blocking: Blocking,
                  reports: TLSReportStore | None = None, port: int = 443) -> MtaSts | None:
    """The MTA-STS policy source, None when ``smtp_mta_sts_enable = no``; failed policy
    fetches are counted in ``reports`` when given."""
    mail = cfg.mail
    if not mail.smtp_mta_sts_enable:
        return None
    names = MXResolver(mail.dns_resolver, reactor=reactor)
    fetcher = PolicyFetcher(reactor, names, cafile=mail.smtp_tls_CAfile, port=port)
    report = sts_fetch_reporter(reports) if reports is not None else None
    return MtaSts(names, fetcher, reactor, blocking, cache_path(mail.queue_directory),
                  report=report)
