"""Account set-up over HTTP(S): mail clients fill in host, ports and encryption by themselves.

``[listen] autoconfig`` (HTTP) and ``autoconfigs`` (HTTPS) serve, described from mail.ini
(myhostname, the enabled ports, ``[tls] ssl``):

- Thunderbird: ``GET /.well-known/autoconfig/mail/config-v1.1.xml`` and
  ``GET /mail/config-v1.1.xml`` (clientConfig v1.1; user name ``%EMAILLOCALPART%``);
- Outlook: ``POST /autodiscover/autodiscover.xml`` (the "POX" request naming EMailAddress,
  answered with the Outlook 2006a response schema: one IMAP, POP3 and SMTP Protocol each, the
  local part as LoginName, SPA off), and ``GET /autodiscover/autodiscover.json`` (``?Email=&
  Protocol=`` or ``/v1.0/ADDRESS?Protocol=``), which for ``AutodiscoverV1`` points to that XML
  service and for anything else (EWS, ActiveSync) says 404, so Outlook goes on to IMAP.

Every client is offered the best door of each protocol: implicit TLS (993, 995, 465) when that
port is on, else STARTTLS (143, 110, 587), else, with ``ssl = no`` only, the plain port. Port
25 is never offered to clients. The login name is the local part of the address in lower case
(Unix account names), whether or not such an account exists: the answer never tells who has
an account. Addresses of domains that are not in mydestination get Outlook's error 500.

With ``[tls] acme = yes``, ``GET /.well-known/acme-challenge/TOKEN`` answers the ACME CA's
http-01 challenge from the token files (mailsuite.acme.tokens).

With ``[mail] mta_sts_mode`` testing or enforce, ``GET /.well-known/mta-sts.txt`` for the host
``mta-sts.DOMAIN`` of one of our domains is our MTA-STS policy (mailsuite.mtastsserve).

Requests bodies are capped at 64 KiB and XML with a DOCTYPE is refused (no entity tricks).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from twisted.web import resource, server

from mailsuite import mtastsserve
from mailsuite.acme import conf as acme_conf
from mailsuite.acme import tokens
from mailsuite.config import Config
from mailsuite.threads import Blocking, InPool, inline

MAX_BODY = 65536
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


@dataclass(frozen=True)
class Door:
    """One way into one protocol: ``kind`` imap/pop3/smtp, ``security`` SSL, STARTTLS or plain."""

    kind: str
    port: int
    security: str


def doors(cfg: Config) -> dict[str, list[Door]]:
    """The client doors of a configuration, best first, per protocol (empty list: none)."""
    ssl = cfg.tls.ssl != "no"
    listen = cfg.listen
    table = {"imap": ("imaps", "imap"), "pop3": ("pop3s", "pop3"), "smtp": ("smtps", "submission")}
    out: dict[str, list[Door]] = {}
    for kind, (implicit, starttls) in table.items():
        found = []
        if ssl and getattr(listen, implicit) is not None:
            found.append(Door(kind, getattr(listen, implicit), "SSL"))
        if getattr(listen, starttls) is not None:
            found.append(Door(kind, getattr(listen, starttls), "STARTTLS" if ssl else "plain"))
        out[kind] = found
    return out


def local_part(address: str) -> str:
    """The login name for an address: the part before the last @, in lower case."""
    return address.rpartition("@")[0].strip().lower() if "@" in address else address.strip().lower()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def our_domains(cfg: Config) -> list[str]:
    """The mail domains of this server: mydestination without localhost names."""
    names = [
        d for d in cfg.mail.mydestination if d != "localhost" and not d.startswith("localhost.")
    ]
    return names or [cfg.mail.mydomain]


# -- Thunderbird ---------------------------------------------------------------------------------

def thunderbird_xml(cfg: Config, address: str = "") -> bytes:
    """clientConfig v1.1 for the address's domain (one of ours) or the first of our domains."""
    domains = our_domains(cfg)
    wanted = domain_of(address) if address else ""
    provider = wanted if wanted in domains else domains[0]
    host = escape(cfg.mail.myhostname)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<clientConfig version="1.1">',
             f'  <emailProvider id="{escape(provider, {chr(34): "&quot;"})}">']
    lines += [f"    <domain>{escape(d)}</domain>" for d in domains]
    lines += [f"    <displayName>{escape(provider)} mail</displayName>",
              f"    <displayShortName>{escape(provider)}</displayShortName>"]
    found = doors(cfg)
    for kind in ("imap", "pop3", "smtp"):
        tag = "outgoingServer" if kind == "smtp" else "incomingServer"
        for door in found[kind]:
            lines += [f'    <{tag} type="{kind}">',
                      f"      <hostname>{host}</hostname>",
                      f"      <port>{door.port}</port>",
                      f"      <socketType>{door.security}</socketType>",
                      "      <authentication>password-cleartext</authentication>",
                      "      <username>%EMAILLOCALPART%</username>",
                      f"    </{tag}>"]
    lines += ["  </emailProvider>", "</clientConfig>", ""]
    return "\n".join(lines).encode("utf-8")


# -- Outlook -------------------------------------------------------------------------------------

class BadRequest(ValueError):
    """A POX request that cannot be answered with settings."""


def parse_pox(body: bytes) -> str:
    """The EMailAddress of an Outlook autodiscover request; BadRequest if there is none."""
    if b"<!" in body.upper().replace(b"<![CDATA[", b""):
        raise BadRequest("DOCTYPE and entity declarations are not accepted")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise BadRequest(f"not XML: {e}") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress" and (element.text or "").strip():
            return element.text.strip()  # type: ignore[union-attr]
    raise BadRequest("no EMailAddress")


def outlook_error(code: int, message: str, now: float | None = None) -> bytes:
    """Exchange's error response (600 Invalid Request, 500 address not found)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(time.time() if now is None else now))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Autodiscover xmlns="{RESPONSE_NS}">\n'
        "  <Response>\n"
        f'    <Error Time="{stamp}" Id="{secrets.randbelow(10**10)}">\n'
        f"      <ErrorCode>{code}</ErrorCode>\n"
        f"      <Message>{escape(message)}</Message>\n"
        "      <DebugData />\n"
        "    </Error>\n"
        "  </Response>\n"
        "</Autodiscover>\n"
    ).encode()


def outlook_xml(cfg: Config, address: str) -> bytes:
    """The Outlook 2006a settings for ``address``: the best IMAP, POP3 and SMTP door each."""
    if domain_of(address) not in our_domains(cfg) or not local_part(address):
        return outlook_error(500, "The e-mail address cannot be found.")
    login = escape(local_part(address))
    host = escape(cfg.mail.myhostname)
    lines = ['<?xml version="1.0" encoding="utf-8"?>', f'<Autodiscover xmlns="{RESPONSE_NS}">',
             f'  <Response xmlns="{OUTLOOK_NS}">', "    <Account>",
             "      <AccountType>email</AccountType>", "      <Action>settings</Action>"]
    for kind, doors_of_kind in doors(cfg).items():
        if not doors_of_kind:
            continue
        door = doors_of_kind[0]
        encryption = {"SSL": "SSL", "STARTTLS": "TLS", "plain": "None"}[door.security]
        lines += ["      <Protocol>",
                  f"        <Type>{kind.upper()}</Type>",
                  f"        <Server>{host}</Server>",
                  f"        <Port>{door.port}</Port>",
                  "        <DomainRequired>off</DomainRequired>",
                  f"        <LoginName>{login}</LoginName>",
                  "        <SPA>off</SPA>",
                  f"        <SSL>{'off' if door.security == 'plain' else 'on'}</SSL>",
                  f"        <Encryption>{encryption}</Encryption>",
                  "        <AuthRequired>on</AuthRequired>"]
        if kind == "smtp":
            lines += ["        <UsePOPAuth>off</UsePOPAuth>", "        <SMTPLast>off</SMTPLast>"]
        lines.append("      </Protocol>")
    lines += ["    </Account>", "  </Response>", "</Autodiscover>", ""]
    return "\n".join(lines).encode("utf-8")


def autodiscover_json(cfg: Config, protocol: str, host_header: str) -> tuple[int, dict[str, str]]:
    """(status, body) of Outlook's autodiscover.json: AutodiscoverV1 -> the POX service URL."""
    if protocol.lower() != "autodiscoverv1":
        return 404, {"ErrorCode": "ProtocolNotSupported",
                     "ErrorMessage": f"Protocol {protocol!r} is not offered; use IMAP or POP3."}
    host = host_header if _HOST.fullmatch(host_header or "") else cfg.mail.myhostname
    return 200, {"Protocol": "AutodiscoverV1",
                 "Url": f"https://{host}/autodiscover/autodiscover.xml"}


# -- twisted.web ---------------------------------------------------------------------------------

class _Request(server.Request):
    """A request whose body is kept only up to MAX_BODY bytes (more marks it too_large)."""

    too_large = False

    def gotLength(self, length: int | None) -> None:
        self._body = io.BytesIO()
        self.content = self._body  # type: ignore[assignment]
        if length is not None and length > MAX_BODY:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large or self._body.tell() + len(data) > MAX_BODY:
            self.too_large = True
            return
        self._body.write(data)


class AutoconfigResource(resource.Resource):
    """The whole site: dispatches on the path (autodiscover paths in any case, as Outlook
    writes ``/Autodiscover/Autodiscover.xml``)."""

    isLeaf = True

    def __init__(self, cfg: Config, blocking: Blocking = inline) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocking = blocking
        self.tokens = tokens.TokenStore(acme_conf.challenge_dir(cfg)) if cfg.tls.acme else None

    def render(self, request: Any) -> Any:
        path = request.path.decode("utf-8", "replace")
        lower = path.lower()
        request.setHeader(b"Cache-Control", b"no-store")
        if self.tokens is not None and path.startswith(tokens.PREFIX):  # RFC 8555 8.3
            return tokens.serve(request, self.tokens, self.blocking)
        if path in ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"):
            if request.method not in (b"GET", b"HEAD"):
                return self._status(request, 405, b"GET only\n")
            address = _arg(request, b"emailaddress")
            return self._xml(request, thunderbird_xml(self.cfg, address))
        if path == mtastsserve.WELL_KNOWN:  # our MTA-STS policy (RFC 8461 3.3)
            host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
            policy = mtastsserve.policy_for_host(self.cfg, host)
            if policy is not None and request.method in (b"GET", b"HEAD"):
                return self._status(request, 200, policy)
        if lower == "/autodiscover/autodiscover.xml":
            return self._pox(request)
        if lower.startswith("/autodiscover/autodiscover.json"):
            protocol = _arg(request, b"Protocol") or _arg(request, b"protocol")
            host = (request.getHeader(b"host") or b"").decode("ascii", "replace").strip()
            status, body = autodiscover_json(self.cfg, protocol, host)
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            return json.dumps(body).encode("utf-8")
        return self._status(request, 404, b"Not found\n")

    def _pox(self, request: Any) -> bytes:
        if request.method != b"POST" or request.too_large:
            return self._xml(request, outlook_error(600, "Invalid Request"))
        try:
            address = parse_pox(request.content.getvalue())
        except BadRequest:
            return self._xml(request, outlook_error(600, "Invalid Request"))
        return self._xml(request, outlook_xml(self.cfg, address))

    @staticmethod
    def _xml(request: Any, body: bytes) -> bytes:
        request.setHeader(b"Content-Type", b"application/xml; charset=utf-8")
        return body

    @staticmethod
    def _status(request: Any, code: int, body: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return body


def _arg(request: Any, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    return values[0].decode("utf-8", "replace")


def build_site(cfg: Config, reactor: Any = None) -> server.Site:
    """The HTTP factory for ``[listen] autoconfig`` (tap.py wraps it in TLS for autoconfigs);
    ``reactor``: the one whose thread pool reads the ACME token files (None: inline)."""
    blocking = inline if reactor is None else InPool(reactor)
    site = server.Site(AutoconfigResource(cfg, blocking), timeout=30)
    site.requestFactory = _Request
    site.displayTracebacks = False
    return site
