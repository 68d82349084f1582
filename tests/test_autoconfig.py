"""Account set-up (mailsuite.autoconfig): Thunderbird autoconfig and Outlook autodiscover, driven
through the real twisted.web Site over a StringTransport (OUTLOOK.md item 26)."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from mailsuite import autoconfig
from mailsuite.config import parse_config

BASE = """\
[mail]
myhostname = mail.example.test
mydomain = example.test
mydestination = $myhostname, example.test, other.test, localhost.$mydomain, localhost
[listen]
autoconfig = 8080
"""

POX = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>%s</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>
"""
A = "{" + autoconfig.OUTLOOK_NS + "}"
ERROR_CODE = ".//{" + autoconfig.RESPONSE_NS + "}ErrorCode"


def config(extra=""):
    return parse_config(BASE + extra, "mail.ini")


def http(cfg, method, path, body=b"", headers=b""):
    """One request through build_site's protocol; (status, headers text, body bytes)."""
    site = autoconfig.build_site(cfg)
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    request = (method + b" " + path + b" HTTP/1.1\r\nHost: autodiscover.example.test\r\n"
               + headers + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    proto.dataReceived(request)
    head, _, content = transport.value().partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    proto.connectionLost(None)
    return status, head.decode(), content


def tb_servers(xml):
    root = ElementTree.fromstring(xml)
    return [(s.get("type"), s.findtext("hostname"), int(s.findtext("port")),
             s.findtext("socketType"), s.findtext("username"), s.findtext("authentication"))
            for s in root.iter() if s.tag in ("incomingServer", "outgoingServer")]


def outlook_protocols(xml):
    root = ElementTree.fromstring(xml)
    return {p.findtext(A + "Type"): {c.tag.replace(A, ""): c.text for c in p}
            for p in root.iter(A + "Protocol")}


class ThunderbirdTests(unittest.TestCase):
    def test_both_paths_with_tls(self):
        """Both Thunderbird paths give clientConfig 1.1: IMAP 993 SSL then 143 STARTTLS,
        POP3 995/110, SMTP 465 SSL/587 STARTTLS; login %EMAILLOCALPART%, cleartext password."""
        cfg = config()
        for path in (b"/.well-known/autoconfig/mail/config-v1.1.xml"
                     b"?emailaddress=boss%40example.test",
                     b"/mail/config-v1.1.xml"):
            status, head, body = http(cfg, b"GET", path)
            self.assertEqual(status, 200)
            self.assertIn("application/xml", head)
            login = ("%EMAILLOCALPART%", "password-cleartext")
            self.assertEqual(tb_servers(body), [
                ("imap", "mail.example.test", 993, "SSL", *login),
                ("imap", "mail.example.test", 143, "STARTTLS", *login),
                ("pop3", "mail.example.test", 995, "SSL", *login),
                ("pop3", "mail.example.test", 110, "STARTTLS", *login),
                ("smtp", "mail.example.test", 465, "SSL", *login),
                ("smtp", "mail.example.test", 587, "STARTTLS", *login),
            ])

    def test_domains_and_provider(self):
        """The provider is the asked domain when it is ours; every mail domain is listed,
        localhost names are not."""
        body = autoconfig.thunderbird_xml(config(), "x@other.test")
        root = ElementTree.fromstring(body)
        provider = root.find("emailProvider")
        self.assertEqual(provider.get("id"), "other.test")
        self.assertEqual([d.text for d in provider.findall("domain")],
                         ["mail.example.test", "example.test", "other.test"])
        self.assertEqual(
            ElementTree.fromstring(autoconfig.thunderbird_xml(config(), "x@evil.test"))
            .find("emailProvider").get("id"), "mail.example.test")

    def test_follows_the_enabled_ports(self):
        """Ports that are off are not offered; ssl = no offers the plain ports as plain."""
        cfg = config("smtps = no\npop3 = no\npop3s = no\nimaps = no\nimap = 1143\n"
                     "[tls]\nssl = no\n")
        servers = tb_servers(autoconfig.thunderbird_xml(cfg))
        self.assertEqual([(k, p, s) for k, _, p, s, _, _ in servers],
                         [("imap", 1143, "plain"), ("smtp", 587, "plain")])

    def test_xml_is_escaped(self):
        """Names that are not XML-safe cannot break the document."""
        cfg = config()
        object.__setattr__(cfg.mail, "myhostname", 'a<b>&"c')
        root = ElementTree.fromstring(autoconfig.thunderbird_xml(cfg))
        self.assertEqual(root.find(".//hostname").text, 'a<b>&"c')

    def test_post_is_refused(self):
        """The Thunderbird files are GET only."""
        self.assertEqual(http(config(), b"POST", b"/mail/config-v1.1.xml")[0], 405)


class OutlookPoxTests(unittest.TestCase):
    def test_settings_for_a_local_address(self):
        """POST autodiscover.xml: Outlook 2006a with IMAP 993 and POP3 995 SSL, SMTP 465 SSL,
        LoginName the local part, SPA off, in the response schema namespaces."""
        status, _, body = http(config(), b"POST", b"/Autodiscover/Autodiscover.xml",
                                  POX % b"Boss@example.test", b"Content-Type: text/xml\r\n")
        self.assertEqual(status, 200)
        root = ElementTree.fromstring(body)
        self.assertEqual(root.tag, "{" + autoconfig.RESPONSE_NS + "}Autodiscover")
        self.assertEqual(root.findtext(f".//{A}Action"), "settings")
        protocols = outlook_protocols(body)
        self.assertEqual(list(protocols), ["IMAP", "POP3", "SMTP"])
        for kind, port in (("IMAP", "993"), ("POP3", "995"), ("SMTP", "465")):
            p = protocols[kind]
            self.assertEqual(tuple(p[k] for k in ("Server", "Port", "SSL", "Encryption",
                                                  "LoginName", "SPA")),
                             ("mail.example.test", port, "on", "SSL", "boss", "off"))

    def test_starttls_ports_when_implicit_tls_is_off(self):
        """Without 993/465 Outlook gets 143 and 587 with Encryption TLS (STARTTLS)."""
        body = outlook_xml_for(config("imaps = no\nsmtps = no\npop3 = no\npop3s = no\n"))
        protocols = outlook_protocols(body)
        self.assertEqual(list(protocols), ["IMAP", "SMTP"])
        imap, smtp = protocols["IMAP"], protocols["SMTP"]
        self.assertEqual((imap["Port"], imap["Encryption"]), ("143", "TLS"))
        self.assertEqual((smtp["Port"], smtp["Encryption"]), ("587", "TLS"))

    def test_foreign_domain_is_error_500(self):
        """An address of a domain this server does not receive for: Exchange's error 500."""
        body = outlook_xml_for(config(), "boss@elsewhere.test")
        self.assertEqual(ElementTree.fromstring(body).findtext(ERROR_CODE),
                         "500")

    def test_bad_requests_are_error_600(self):
        """GET, non-XML, no address, an entity declaration or an over-long body: error 600."""
        cfg = config()
        bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
        for method, body in ((b"GET", b""), (b"POST", b"not xml"), (b"POST", b"<Autodiscover/>"),
                             (b"POST", bomb), (b"POST", POX % (b"a" * 70000 + b"@example.test"))):
            status, _, answer = http(cfg, method, b"/autodiscover/autodiscover.xml", body)
            self.assertEqual(status, 200)
            code = ElementTree.fromstring(answer).findtext(ERROR_CODE)
            self.assertEqual(code, "600", (method, body[:40]))

    def test_login_name_is_escaped(self):
        """A local part with XML characters comes back escaped, as text."""
        body = outlook_xml_for(config(), "a&amp;b&lt;c@example.test")
        self.assertEqual(outlook_protocols(body)["IMAP"]["LoginName"], "a&b<c")

    def test_unknown_users_get_settings_too(self):
        """The answer does not reveal whether an account exists."""
        self.assertEqual(outlook_protocols(outlook_xml_for(config(), "nobody-here@example.test"))
                         ["IMAP"]["LoginName"], "nobody-here")


def outlook_xml_for(cfg, address="boss@example.test"):
    status, _, body = http(cfg, b"POST", b"/autodiscover/autodiscover.xml", POX % address.encode())
    assert status == 200
    return body


class OutlookJsonTests(unittest.TestCase):
    def test_autodiscover_v1_points_to_the_xml_service(self):
        """autodiscover.json?Protocol=AutodiscoverV1 answers the POX URL on the asked host."""
        for path in (b"/autodiscover/autodiscover.json"
                     b"?Email=boss%40example.test&Protocol=AutodiscoverV1",
                     b"/autodiscover/autodiscover.json/v1.0/boss@example.test?Protocol=AutodiscoverV1"):
            status, head, body = http(config(), b"GET", path)
            self.assertEqual(status, 200)
            self.assertIn("application/json", head)
            self.assertEqual(json.loads(body), {
                "Protocol": "AutodiscoverV1",
                "Url": "https://autodiscover.example.test/autodiscover/autodiscover.xml"})

    def test_other_protocols_are_404(self):
        """EWS / ActiveSync are not offered: 404 with a JSON error, so Outlook moves on."""
        status, _, body = http(config(), b"GET",
                               b"/autodiscover/autodiscover.json?Email=boss%40example.test&Protocol=Ews")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["ErrorCode"], "ProtocolNotSupported")

    def test_odd_host_header_is_not_reflected(self):
        """A Host header that is not a host name falls back to myhostname."""
        _, body = autoconfig.autodiscover_json(config(), "AutodiscoverV1", 'x"><script>')
        self.assertEqual(body["Url"], "https://mail.example.test/autodiscover/autodiscover.xml")


class SiteTests(unittest.TestCase):
    def test_unknown_path_is_404(self):
        """Anything else is 404."""
        self.assertEqual(http(config(), b"GET", b"/")[0], 404)

    def test_dummy_request(self):
        """The resource also renders for twisted.web's DummyRequest (what other tests use)."""
        request = DummyRequest([b""])
        request.path = b"/mail/config-v1.1.xml"
        body = autoconfig.AutoconfigResource(config()).render(request)
        self.assertIn(b"<clientConfig", body)

    def test_config_keys(self):
        """[listen] autoconfig / autoconfigs are off by default; autoconfigs needs TLS."""
        from mailsuite.config import ConfigError

        cfg = parse_config("[mail]\nmyhostname = m.example.test\n", "mail.ini")
        self.assertEqual((cfg.listen.autoconfig, cfg.listen.autoconfigs), (None, None))
        self.assertNotIn("autoconfig", cfg.listen.enabled())
        error = self.assertRaises(
            ConfigError, parse_config,
            "[mail]\nmyhostname = m.example.test\n[listen]\nautoconfigs = 443\nimaps = no\n"
            "pop3s = no\nsmtps = no\n[tls]\nssl = no\n", "mail.ini")
        self.assertIn("[listen] autoconfigs:", str(error))
