"""mail.ini: every key's default and conversion, every kind of error (all reported at once),
$name expansion, mail_location expansion, and the shipped etc/mail.ini."""

from __future__ import annotations

import ipaddress
import os
import re

from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.config import ConfigError, load_config, parse_config
from mailsuite.net import default_hostname

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "etc", "mail.ini")
FILE = "/etc/mailsuite/mail.ini"
NO_TLS = ""  # the default ssl = yes is valid: nothing to add
BOSS = Account("boss", 1000, 1000, "/home/boss")

# The contract table of DESIGN.md, section by section.
CONTRACT_KEYS = {
    "mail": [
        "myhostname", "mydomain", "myorigin", "mydestination", "inet_interfaces", "mynetworks",
        "relay_domains", "relayhost", "message_size_limit", "alias_maps", "queue_directory",
        "maillog_file", "maximal_queue_lifetime", "dns_resolver",
    ],
    "listen": ["smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "lmtp"],
    "auth": [
        "passdb", "passwd_file", "shadow_file", "first_valid_uid", "disable_plaintext_auth",
        "login_trusted_networks",
    ],
    "mailbox": ["mail_location", "sent", "drafts", "trash", "junk"],
    "tls": ["ssl", "ssl_cert", "ssl_key"],
}


def parse(text: str = "", hostname: str = "mail.example.com"):
    """Parse ``text`` as the file at FILE."""
    return parse_config(text, FILE, hostname=lambda: hostname)


def section(name: str, **keys: str) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


class ConfigTestCase(unittest.TestCase):
    def errors(self, text: str) -> list[str]:
        """The error lines of a file that must be refused."""
        return self.assertRaises(ConfigError, parse, text).errors

    def assert_refused(self, text: str, line: str) -> None:
        """Exactly one error, and it is ``line`` (a regex, matched in full)."""
        errors = self.errors(text)
        self.assertEqual(len(errors), 1, errors)
        self.assertRegex(errors[0], "^" + line + "$")


class DefaultTests(ConfigTestCase):
    def test_mail_defaults(self):
        """An empty [mail] gives the contract's defaults, derived from the host name."""
        cfg = parse("")
        m = cfg.mail
        self.assertEqual(m.myhostname, "mail.example.com")
        self.assertEqual(m.mydomain, "example.com")
        self.assertEqual(m.myorigin, "example.com")
        self.assertEqual(m.mydestination,
                         ["mail.example.com", "localhost.example.com", "localhost"])
        self.assertEqual(m.inet_interfaces, ["all"])
        self.assertEqual(
            m.mynetworks, [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
        )
        self.assertEqual(m.relay_domains, [])
        self.assertEqual(m.relayhost, "")
        self.assertEqual(m.message_size_limit, 10240000)
        self.assertEqual(m.alias_maps, ["/etc/aliases"])
        self.assertEqual(m.queue_directory, "/var/spool/mailsuite")
        self.assertEqual(m.maillog_file, "/var/log/maillog")
        self.assertEqual(m.maximal_queue_lifetime, 5 * 86400.0)
        self.assertEqual(m.dns_resolver, "")
        self.assertEqual(cfg.path, FILE)

    def test_single_label_hostname(self):
        """mydomain of a one-label host name is 'localdomain', as Postfix makes it."""
        self.assertEqual(parse("", hostname="Mailhost").mail.mydomain, "localdomain")

    def test_hostname_default_is_fqdn(self):
        """Without myhostname and without a hostname function, the host's name is used."""
        cfg = parse_config(NO_TLS, FILE)
        self.assertEqual(cfg.mail.myhostname, default_hostname().lower().rstrip("."))

    def test_hostname_not_asked_when_set(self):
        """A myhostname in the file means the host name is never looked up."""

        def fail() -> str:
            raise AssertionError("looked up")

        cfg = parse_config("[mail]\nmyhostname = a.b.example\n" + NO_TLS, FILE, hostname=fail)
        self.assertEqual((cfg.mail.myhostname, cfg.mail.mydomain), ("a.b.example", "b.example"))

    def test_listen_defaults(self):
        """Ports 25/587/465/110/995/143/993, LMTP off."""
        listen = parse("").listen
        self.assertEqual(
            [listen.smtp, listen.submission, listen.smtps, listen.pop3, listen.pop3s,
             listen.imap, listen.imaps, listen.lmtp],
            [25, 587, 465, 110, 995, 143, 993, None],
        )
        self.assertEqual(list(listen.enabled()), CONTRACT_KEYS["listen"][:-1])

    def test_auth_defaults(self):
        """shadow over /etc/passwd + /etc/shadow, uid 1000 up, plaintext disabled."""
        auth = parse("").auth
        self.assertEqual(
            (auth.passdb, auth.passwd_file, auth.shadow_file, auth.first_valid_uid),
            ("shadow", "/etc/passwd", "/etc/shadow", 1000),
        )
        self.assertIs(auth.disable_plaintext_auth, True)
        self.assertEqual(auth.login_trusted_networks, [])

    def test_mailbox_default(self):
        """Folders in ~/mail, INBOX in /var/mail/USER."""
        mailbox = parse("").mailbox
        self.assertEqual(mailbox.mail_location, "mbox:~/mail:INBOX=/var/mail/%u")
        self.assertEqual(mailbox.inbox_path(BOSS), "/var/mail/boss")
        self.assertEqual(mailbox.folder_root(BOSS), "/home/boss/mail")
        self.assertEqual(
            mailbox.special_folders(),
            {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"},
        )

    def test_special_folder_names(self):
        """Special-use folder names are configurable (Outlook's), may be switched off with an
        empty value, and unusable names are refused."""
        mailbox = parse(section("mailbox", sent="Sent Items", trash="Deleted Items",
                                junk="", drafts="Entwürfe")).mailbox
        self.assertEqual(
            mailbox.special_folders(),
            {"Sent Items": "\\Sent", "Entwürfe": "\\Drafts", "Deleted Items": "\\Trash"},
        )
        for bad in ("a//b", "../etc", ".imap", "INBOX"):
            self.assert_refused(section("mailbox", trash=bad),
                                ".* \\[mailbox\\] trash: not a usable folder name.*")

    def test_tls_defaults(self):
        """ssl = yes; certificate and key under /etc/mailsuite/tls."""
        tls = parse("").tls
        self.assertEqual((tls.ssl, tls.ssl_cert, tls.ssl_key),
                         ("yes", "/etc/mailsuite/tls/cert.pem", "/etc/mailsuite/tls/key.pem"))

    def test_empty_mydestination(self):
        """An empty mydestination is allowed (no local delivery), as in Postfix."""
        self.assertEqual(parse(section("mail", mydestination="")).mail.mydestination, [])

    def test_bad_domain(self):
        """A name that is not a domain is refused."""
        self.assert_refused(section("mail", myorigin="exa mple..com"),
                            re.escape(f"{FILE}: [mail] myorigin: 'exa mple..com' is not a valid"
                                      " domain name"))

    def test_inet_interfaces(self):
        """all, loopback-only, or addresses (IPv6 with or without brackets)."""
        for text, want in [("loopback-only", ["loopback-only"]), ("ALL", ["all"]),
                           ("127.0.0.1, [::1] 192.0.2.1", ["127.0.0.1", "::1", "192.0.2.1"])]:
            self.assertEqual(parse(section("mail", inet_interfaces=text)).mail.inet_interfaces,
                             want, text)
        for bad in ["all, 127.0.0.1", "a..b", ""]:
            self.assert_refused(section("mail", inet_interfaces=bad),
                                ".* inet_interfaces: .*expected all, loopback-only, or a list .*")

    def test_inet_interfaces_host_names(self):
        """Host names are accepted as Postfix accepts them (resolved at start): localhost,
        a name among addresses; a name twice is listed once."""
        for text, want in [("localhost", ["localhost"]),
                           ("Mail.Example.COM, 127.0.0.1 localhost localhost",
                            ["mail.example.com", "127.0.0.1", "localhost"])]:
            self.assertEqual(parse(section("mail", inet_interfaces=text)).mail.inet_interfaces,
                             want, text)

    def test_every_bad_list_item_named(self):
        """A list value with several bad items gets one error line per item, not only the
        first one's."""
        errors = self.errors(section("mail", mydestination="a..b, example.com, -c-",
                                     mynetworks="10.0.0.1/8 127.0.0.0/8 nonsense",
                                     inet_interfaces="127.0.0.1 x..y 300.1.1.1",
                                     alias_maps="nis:a /etc/aliases relative"))
        self.assertEqual(errors, [
            f"{FILE}: [mail] mydestination: 'a..b' is not a valid domain name",
            f"{FILE}: [mail] mydestination: '-c-' is not a valid domain name",
            f"{FILE}: [mail] inet_interfaces: 'x..y' is not an IP address or a host name;"
            " expected all, loopback-only, or a list of IP addresses or host names",
            f"{FILE}: [mail] inet_interfaces: '300.1.1.1' is not an IP address or a host name;"
            " expected all, loopback-only, or a list of IP addresses or host names",
            f"{FILE}: [mail] mynetworks: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
            f"{FILE}: [mail] mynetworks: 'nonsense' is not an IP network (like 127.0.0.0/8 or"
            " [::1]/128)",
            f"{FILE}: [mail] alias_maps: 'nis:a': map type nis: is not supported (use a file"
            " path, hash:, lmdb: or texthash:)",
            f"{FILE}: [mail] alias_maps: 'relative' is not an absolute path",
        ])

    def test_key_in_wrong_section(self):
        """A key of another section says where it belongs; a typo still gets a suggestion."""
        errors = self.errors(section("mail", disable_plaintext_auth="no", ssl_cert="/c") +
                             section("auth", myhostname="x.example", passdbb="pam"))
        self.assertEqual(errors, [
            f"{FILE}: [mail] disable_plaintext_auth: belongs in [auth]",
            f"{FILE}: [mail] ssl_cert: belongs in [tls]",
            f"{FILE}: [auth] myhostname: belongs in [mail]",
            f"{FILE}: [auth] passdbb: unknown key (did you mean passdb?)",
        ])

    def test_mynetworks(self):
        """Postfix syntax: [::1]/128 with brackets, commas and/or spaces; a bare address is /32."""
        nets = parse(section("mail", mynetworks="127.0.0.0/8, [::1]/128 10.0.0.0/8,192.0.2.7"
                             " 2001:db8::/32")).mail.mynetworks
        self.assertEqual([str(n) for n in nets],
                         ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])

    def test_bad_networks(self):
        """Garbage and host bits set are refused, the latter with the network meant."""
        self.assert_refused(section("mail", mynetworks="127.0.0.0/8 hash:/etc/postfix/network"),
                            r".*\[mail\] mynetworks: 'hash:/etc/postfix/network' is not an IP "
                            r"network \(like 127.0.0.0/8 or \[::1\]/128\)")
        self.assert_refused(section("auth", login_trusted_networks="192.168.1.1/24"),
                            r".*\[auth\] login_trusted_networks: '192.168.1.1/24' has host bits"
                            r" set; did you mean 192.168.1.0/24\?")

    def test_relayhost(self):
        """[host]:port, host:port, [host], host and IPs are kept as written; bad ones refused."""
        for text in ["[smtp.example.com]:587", "smtp.example.com", "[192.0.2.1]", "relay:25",
                     "[ipv6:2001:db8::1]:25", ""]:
            self.assertEqual(parse(section("mail", relayhost=text)).mail.relayhost, text)
        self.assert_refused(section("mail", relayhost="[smtp.example.com]:99999"),
                            ".* relayhost: port '99999' is not a number from 1 to 65535")
        self.assert_refused(section("mail", relayhost="[bad host]"),
                            ".* relayhost: 'bad host' is not a valid domain name")
        self.assert_refused(section("mail", relayhost="a:b:c"),
                            ".* relayhost: 'a:b:c' is not \\[host\\]:port")

    def test_message_size_limit(self):
        """Bytes, with optional k/M/G (1024-based); 0 means no limit."""
        for text, want in [("0", 0), ("51200000", 51200000), ("10M", 10 * 1024**2),
                           ("512k", 512 * 1024), ("1 G", 1024**3)]:
            self.assertEqual(
                parse(section("mail", message_size_limit=text)).mail.message_size_limit, want)
        for bad in ["ten", "-1", "10MB", "1.5M"]:
            self.assert_refused(section("mail", message_size_limit=bad),
                                ".* message_size_limit: .* is not a size in bytes .*")

    def test_alias_maps(self):
        """Plain paths and hash:/lmdb:/texthash: maps give file paths; other types are refused."""
        cfg = parse(section("mail", alias_maps="hash:/etc/aliases, lmdb:/a texthash:/b,/c"))
        self.assertEqual(cfg.mail.alias_maps, ["/etc/aliases", "/a", "/b", "/c"])
        self.assertEqual(parse(section("mail", alias_maps="")).mail.alias_maps, [])
        self.assert_refused(section("mail", alias_maps="hash:/etc/aliases, nis:mail.aliases"),
                            ".* alias_maps: 'nis:mail.aliases': map type nis: is not supported.*")
        self.assert_refused(section("mail", alias_maps="hash:aliases"),
                            ".* alias_maps: 'aliases' is not an absolute path")

    def test_paths_must_be_absolute(self):
        """Relative or empty paths are refused, each under its own key (maillog_file may be
        empty: syslog, as Postfix; a relative one is refused)."""
        errors = self.errors(section("mail", queue_directory="spool", maillog_file="log") +
                             section("auth", passwd_file="passwd", shadow_file="./shadow"))
        self.assertEqual([e.split(": ")[1] for e in errors],
                         ["[mail] queue_directory", "[mail] maillog_file",
                          "[auth] passwd_file", "[auth] shadow_file"])

    def test_log_habits(self):
        """syslog_name defaults to Postfix's ``postfix``; a name with a space, or a facility
        syslog does not have, is refused under its key."""
        mail = parse("").mail
        self.assertEqual((mail.syslog_name, mail.syslog_facility, mail.syslog_socket),
                         ("postfix", "mail", "/dev/log"))
        mail = parse(section("mail", maillog_file="", syslog_name="postfix-out",
                             syslog_facility="LOCAL3")).mail
        self.assertEqual((mail.maillog_file, mail.syslog_name, mail.syslog_facility),
                         ("", "postfix-out", "local3"))
        errors = self.errors(section("mail", syslog_name="post fix", syslog_facility="mial"))
        self.assertEqual([e.split(": ")[1] for e in errors],
                         ["[mail] syslog_name", "[mail] syslog_facility"])

    def test_queue_lifetime_units(self):
        """Postfix time units s m h d w; a bare number counts days."""
        for text, seconds in [("30s", 30), ("10m", 600), ("2h", 7200), ("5d", 432000),
                              ("1w", 604800), ("3", 3 * 86400), ("0", 0)]:
            lifetime = parse(section("mail", maximal_queue_lifetime=text)).mail
            self.assertEqual(lifetime.maximal_queue_lifetime, float(seconds), text)
        for bad in ["5x", "-1d", "1.5d", "d", "5 d"]:
            self.assert_refused(section("mail", maximal_queue_lifetime=bad),
                                ".* maximal_queue_lifetime: .* is not a time .*")

    def test_dns_resolver(self):
        """Empty, IP:port or [IPv6]:port; a name or a missing port is refused."""
        for text in ["", "127.0.0.1:5353", "[::1]:53"]:
            self.assertEqual(parse(section("mail", dns_resolver=text)).mail.dns_resolver, text)
        for bad in ["127.0.0.1", "dns.example:53"]:
            self.assert_refused(section("mail", dns_resolver=bad),
                                ".* dns_resolver: .* is not IP:port .*")
        self.assert_refused(section("mail", dns_resolver="127.0.0.1:0"),
                            ".* dns_resolver: port '0' is not a number from 1 to 65535")


class ListenAuthTlsTests(ConfigTestCase):
    def test_ports(self):
        """A port number, or no / empty for off; 0 is allowed (any free port)."""
        listen = parse(section("listen", smtp="2525", submission="no", smtps="", pop3="NO",
                               imap="0", lmtp="24")).listen
        self.assertEqual((listen.smtp, listen.submission, listen.smtps, listen.pop3, listen.imap,
                          listen.lmtp), (2525, None, None, None, 0, 24))
        self.assertEqual(listen.enabled(), {"smtp": 2525, "pop3s": 995, "imap": 0,
                                            "imaps": 993, "lmtp": 24})

    def test_bad_ports(self):
        """Out-of-range and non-numeric ports are refused; only lmtp takes a socket path."""
        errors = self.errors(section("listen", smtp="65536", pop3="pop3", imap="-1",
                                     imaps="/run/imap"))
        self.assertEqual(len(errors), 4, errors)
        for error, key in zip(errors, ["smtp", "pop3", "imap", "imaps"], strict=True):
            self.assertRegex(error, f"^{FILE}: \\[listen\\] {key}: port .* is not a number from 0"
                             " to 65535; write no or leave it empty to turn the service off$")

    def test_lmtp_socket(self):
        """lmtp may be an absolute unix socket path, kept as a string."""
        cfg = parse(section("listen", lmtp="/run/mailsuite/lmtp"))
        self.assertEqual(cfg.listen.lmtp, "/run/mailsuite/lmtp")

    def test_passdb(self):
        """shadow and pam are accepted; others are refused."""
        self.assertEqual(parse(section("auth", passdb="Shadow")).auth.passdb, "shadow")
        self.assertEqual(parse(section("auth", passdb="pam")).auth.passdb, "pam")
        self.assert_refused(section("auth", passdb="ldap"),
                            ".* passdb: 'ldap' is not one of: shadow, pam")

    def test_booleans(self):
        """yes/no/true/false/1/0 in any case; anything else is refused."""
        for text, want in [("yes", True), ("No", False), ("TRUE", True), ("false", False),
                           ("1", True), ("0", False)]:
            auth = parse(section("auth", disable_plaintext_auth=text)).auth
            self.assertIs(auth.disable_plaintext_auth, want, text)
        self.assert_refused(section("auth", disable_plaintext_auth="maybe"),
                            ".* disable_plaintext_auth: 'maybe' is not yes or no")

    def test_first_valid_uid(self):
        """A whole number; negative or text is refused."""
        self.assertEqual(parse(section("auth", first_valid_uid="500")).auth.first_valid_uid, 500)
        for bad in ["-1", "many", ""]:
            self.assert_refused(section("auth", first_valid_uid=bad),
                                ".* first_valid_uid: .* is not a whole number")

    def test_plaintext_allowed(self):
        """Dovecot's rule: allowed when not disabled, over TLS, from loopback or trusted nets."""
        auth = parse(section("auth", login_trusted_networks="10.0.0.0/8 [2001:db8::]/32")).auth
        allowed = ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "10.1.2.3", "2001:db8::5"]
        for peer in allowed:
            self.assertTrue(auth.plaintext_allowed(peer, tls=False), peer)
        for peer in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db9::1", "", "not-an-ip"]:
            self.assertFalse(auth.plaintext_allowed(peer, tls=False), peer)
            self.assertTrue(auth.plaintext_allowed(peer, tls=True), peer)
        open_auth = parse(section("auth", disable_plaintext_auth="no")).auth
        self.assertTrue(open_auth.plaintext_allowed("192.0.2.1", tls=False))

    def test_plaintext_allowed_same_host_and_required(self):
        """A client on the server's own address counts as secured (Dovecot: rip == lip);
        ssl = required disables plaintext even when disable_plaintext_auth = no."""
        auth = parse(section("auth", disable_plaintext_auth="yes")).auth
        self.assertTrue(auth.plaintext_allowed("192.0.2.7", tls=False, local_ip="192.0.2.7"))
        self.assertFalse(auth.plaintext_allowed("192.0.2.8", tls=False, local_ip="192.0.2.7"))
        open_auth = parse(section("auth", disable_plaintext_auth="no")).auth
        self.assertFalse(open_auth.plaintext_allowed("192.0.2.1", tls=False, ssl_required=True))
        self.assertTrue(open_auth.plaintext_allowed("192.0.2.1", tls=True, ssl_required=True))
        self.assertTrue(open_auth.plaintext_allowed("127.0.0.1", tls=False, ssl_required=True))

    def test_ssl_values(self):
        """no, yes and required in any case; anything else is refused."""
        for value in ["yes", "Required"]:
            self.assertEqual(parse(section("tls", ssl=value)).tls.ssl, value.lower())
        self.assertEqual(parse(section("tls", ssl="no") + section(
            "listen", smtps="no", pop3s="no", imaps="no")).tls.ssl, "no")
        self.assert_refused(section("tls", ssl="maybe"),
                            ".* ssl: 'maybe' is not one of: no, yes, required")

    def test_implicit_tls_ports_need_ssl(self):
        """smtps, pop3s and imaps on with ssl = no: each refused, saying what to change."""
        errors = self.errors(section("tls", ssl="no"))
        self.assertEqual(errors, [
            f"{FILE}: [listen] {name}: is TLS from the first byte but [tls] ssl = no;"
            f" set ssl = yes, or {name} = no" for name in ("smtps", "pop3s", "imaps")])

    def test_tls_files(self):
        """ssl_cert/ssl_key: absolute paths, Dovecot's '</path' spelling accepted."""
        tls = parse(section("tls", ssl="yes", ssl_cert="</etc/ssl/c.pem", ssl_key="/k.pem")).tls
        self.assertEqual((tls.ssl_cert, tls.ssl_key), ("/etc/ssl/c.pem", "/k.pem"))
        self.assert_refused(section("tls", ssl="yes", ssl_key="key.pem"),
                            ".* ssl_key: 'key.pem' is not an absolute path")


class MailLocationTests(ConfigTestCase):
    def location(self, text: str):
        return parse(section("mailbox", mail_location=text)).mailbox

    def test_variables(self):
        """~ and %h are the home, %u the user, %n/%d its parts, %% a percent sign."""
        box = self.location("mbox:%h/Mail%%:INBOX=/var/spool/%n/%d/%u")
        user = Account("ann@example.org", 1001, 1001, "/home/ann/")
        self.assertEqual(box.folder_root(user), "/home/ann/Mail%")
        self.assertEqual(box.inbox_path(user), "/var/spool/ann/example.org/ann@example.org")
        self.assertEqual(self.location("mbox:~:INBOX=~/inbox.mbox").inbox_path(BOSS),
                         "/home/boss/inbox.mbox")

    def test_inbox_defaults_to_root(self):
        """Without INBOX=, the INBOX is ROOT/inbox (Dovecot's rule)."""
        box = self.location("mbox:/srv/mail/%u")
        self.assertEqual(box.inbox_path(BOSS), "/srv/mail/boss/inbox")
        self.assertEqual(box.folder_root(BOSS), "/srv/mail/boss")

    def test_only_mbox(self):
        """maildir:, sdbox: and missing formats are refused, naming the key."""
        self.assert_refused(section("mailbox", mail_location="maildir:~/Maildir"),
                            f"{FILE}: \\[mailbox\\] mail_location: mailbox format 'maildir' is not "
                            "supported, only mbox: .*")
        self.assert_refused(section("mailbox", mail_location="/var/mail/%u"),
                            ".* mail_location: '/var/mail/%u' is not FORMAT:ROOT, like .*")

    def test_bad_locations(self):
        """Empty root, relative paths, unknown parameters and variables are refused."""
        for bad, message in [("mbox:", "mbox: needs a folder root"),
                             ("mbox:mail", "'mail' must start with /, ~ or %h"),
                             ("mbox:~/mail:INBOX=inbox", "'inbox' must start with /, ~ or %h"),
                             ("mbox:~/mail:INDEX=MEMORY", "'INDEX=MEMORY': only INBOX=PATH"),
                             ("mbox:~/mail:INBOX=", "'INBOX=': only INBOX=PATH"),
                             ("mbox:~/%x", "unknown variable %x"),
                             ("mbox:~/mail%", "unknown variable %")]:
            self.assert_refused(section("mailbox", mail_location=bad),
                                ".* mail_location: " + re.escape(message) + ".*")

    def test_unsafe_account_names(self):
        """An account name that would leave the mail directory is refused at expansion."""
        box = self.location("mbox:~/mail:INBOX=/var/mail/%u")
        for name in ["../root", "..", "", "a/b"]:
            self.assertRaises(ValueError, box.inbox_path, Account(name, 1000, 1000, "/home/x"))


class SyntaxTests(ConfigTestCase):
    def test_comments(self):
        """# and ; start comments at line start and after whitespace; not inside a word."""
        cfg = parse("# top\n; top\n[mail]  # section\nmyhostname = a.example ; inline\n"
                    "  # indented comment\nmaillog_file = /var/log/mail#log;x\n"
                    "relayhost = #\n")
        self.assertEqual(cfg.mail.myhostname, "a.example")
        self.assertEqual(cfg.mail.maillog_file, "/var/log/mail#log;x")
        self.assertEqual(cfg.mail.relayhost, "")

    def test_continuation_lines(self):
        """An indented line continues the value above it, even after blank lines."""
        cfg = parse("[mail]\nmydestination = a.example,\n    b.example\n\n\tc.example\n")
        self.assertEqual(cfg.mail.mydestination, ["a.example", "b.example", "c.example"])

    def test_section_header_spaces_and_repeats(self):
        """[ mail ] is [mail]; a section may appear twice, its keys add up."""
        cfg = parse("[ mail ]\nmyhostname = a.example\n[mail]\nmydomain = b.example\n")
        self.assertEqual((cfg.mail.myhostname, cfg.mail.mydomain), ("a.example", "b.example"))

    def test_syntax_errors(self):
        """Bad lines, keys outside a section, stray indentation and duplicates are errors."""
        errors = self.errors("  indented = 1\nkey = 1\n[mail]\njust words\n[bad header\n"
                             "myorigin = a.example\nmyorigin = b.example\n")
        self.assertEqual(errors, [
            (f"{FILE}: line 1: indented line continues nothing (lines starting with whitespace"
            " continue a value)"),
            f"{FILE}: line 2: 'key = 1' is outside any [section]",
            f"{FILE}: [mail] line 4: 'just words' is not 'key = value', '[section]' or a comment",
            f"{FILE}: [mail] line 5: '[bad header' is not 'key = value', '[section]' or a comment",
            f"{FILE}: [mail] myorigin: set twice (lines 6 and 7)",
        ])

    def test_unknown_sections_and_keys(self):
        """Unknown sections and keys are errors, with the likely name when there is one."""
        errors = self.errors("[mial]\nmyhostname = x\n[mail]\nmyhostnme = x\nfoo = 1\n"
                             "[listen]\nhttp = 80\n[zzz]\n")
        self.assertEqual(errors, [
            f"{FILE}: [mial]: unknown section (did you mean mail?)",
            f"{FILE}: [zzz]: unknown section",
            f"{FILE}: [mail] myhostnme: unknown key (did you mean myhostname?)",
            f"{FILE}: [mail] foo: unknown key",
            f"{FILE}: [listen] http: unknown key",
        ])


class ExpansionTests(ConfigTestCase):
    def test_forms_and_recursion(self):
        """$name and ${name} expand recursively, from [mail], also in other sections."""
        cfg = parse(section("mail", myhostname="mx.${mydomain}", mydomain="example.org",
                            mydestination="$myhostname, ${myorigin}, $mydomain.test",
                            queue_directory="/srv/$mydomain/queue") +
                    section("auth", passwd_file="${queue_directory}/passwd"))
        self.assertEqual(cfg.mail.myhostname, "mx.example.org")
        self.assertEqual(cfg.mail.mydestination, ["mx.example.org", "example.org",
                                                  "example.org.test"])
        self.assertEqual(cfg.auth.passwd_file, "/srv/example.org/queue/passwd")

    def test_defaults_follow_the_file(self):
        """Defaults that refer to other keys use the values set in the file."""
        cfg = parse(section("mail", myhostname="smtp.corp.example"), hostname="ignored.example")
        self.assertEqual((cfg.mail.mydomain, cfg.mail.myorigin),
                         ("corp.example", "corp.example"))
        self.assertEqual(cfg.mail.mydestination,
                         ["smtp.corp.example", "localhost.corp.example", "localhost"])

    def test_dollar_literal(self):
        """$$ is a literal $."""
        self.assertEqual(parse(section("mail", maillog_file="/var/log/$$x")).mail.maillog_file,
                         "/var/log/$x")

    def test_loops(self):
        """A loop is reported on each key of the file in it, with the path it took; defaults
        built on those keys (mydestination here) are not reported again."""
        errors = self.errors(section("mail", mydomain="$myorigin", myorigin="${mydomain}",
                                     relay_domains="$relay_domains"))
        self.assertEqual(errors, [
            f"{FILE}: [mail] mydomain: expansion loop: $mydomain -> $myorigin -> $mydomain",
            f"{FILE}: [mail] myorigin: expansion loop: $myorigin -> $mydomain -> $myorigin",
            f"{FILE}: [mail] relay_domains: expansion loop: $relay_domains -> $relay_domains",
        ])

    def test_bad_value_reported_once(self):
        """A bad myhostname is one error, not one more per default derived from it; a key set
        in the file from it is still reported."""
        errors = self.errors(section("mail", myhostname="mail.bad host!",
                                     relay_domains="$mydomain"))
        self.assertEqual(errors, [
            f"{FILE}: [mail] myhostname: 'mail.bad host!' is not a valid domain name",
            f"{FILE}: [mail] relay_domains: 'host!' is not a valid domain name",
        ])

    def test_unknown_names(self):
        """$ of a name that is not a [mail] key (even one of another section), or a lone $."""
        errors = self.errors(section("mail", relayhost="$smtp", myorigin="$nosuch") +
                             section("auth", shadow_file="/etc/$"))
        self.assertEqual(errors, [
            f"{FILE}: [mail] myorigin: $nosuch: no such key in [mail]",
            f"{FILE}: [mail] relayhost: $smtp: no such key in [mail]",
            (f"{FILE}: [auth] shadow_file: a $ must be followed by a key of [mail] ($$ is a"
            " literal $)"),
        ])


class ErrorReportTests(ConfigTestCase):
    def test_all_errors_at_once(self):
        """One bad file gives every error, one per line, each as FILE: [section] key: message."""
        text = (section("mail", message_size_limit="big", maximal_queue_lifetime="5y") +
                section("listen", smtp="99999") + section("auth", passdb="ldap") +
                section("mailbox", mail_location="maildir:~/Maildir") +
                section("tls", ssl="maybe"))
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(len(error.errors), 6, error.errors)
        keys = ["[mail] message_size_limit", "[mail] maximal_queue_lifetime", "[listen] smtp",
                "[auth] passdb", "[mailbox] mail_location", "[tls] ssl"]
        for line, key in zip(error.errors, keys, strict=True):
            self.assertTrue(line.startswith(f"{FILE}: {key}: "), line)
        self.assertEqual(str(error), "\n".join(error.errors))

    def test_every_contract_key_is_known(self):
        """Every key of DESIGN.md's table can be set (none is an unknown key)."""
        text = "".join(f"[{name}]\n" + "".join(f"{k} = $$bad\n" for k in keys)
                       for name, keys in CONTRACT_KEYS.items())
        self.assertFalse([e for e in self.errors(text) if "unknown" in e])


class LoadTests(ConfigTestCase):
    def test_load(self):
        """load_config reads the file (a UTF-8 byte order mark is fine) and remembers its path."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("\ufeff[mail]\nmyhostname = m.example\n" + NO_TLS)
        cfg = load_config(path)
        self.assertEqual((cfg.path, cfg.mail.myhostname), (path, "m.example"))

    def test_unreadable(self):
        """A missing file, a directory or undecodable bytes is a ConfigError naming the file."""
        bad = self.mktemp()
        with open(bad, "wb") as f:
            f.write(b"[mail]\nmyhostname = \xff\n")
        missing, directory = self.mktemp(), self.mktemp()
        os.mkdir(directory)
        for path in [missing, directory, bad]:
            errors = self.assertRaises(ConfigError, load_config, path).errors
            self.assertEqual(len(errors), 1)
            self.assertTrue(errors[0].startswith(f"{path}: cannot read the configuration file:"))

    def test_shipped_file(self):
        """etc/mail.ini parses cleanly, shows every key, and is the tutorial's site."""
        with open(SHIPPED) as f:
            text = f.read()
        for keys in CONTRACT_KEYS.values():
            for key in keys:
                self.assertRegex(text, f"(?m)^#?{key} =", key)
        cfg = load_config(SHIPPED)
        self.assertEqual(cfg.listen.enabled(), {"smtp": 25, "submission": 587, "smtps": 465,
                                                "pop3": 110, "pop3s": 995, "imap": 143,
                                                "imaps": 993})
        self.assertEqual(cfg.tls.ssl, "yes")
        self.assertEqual((cfg.tls.ssl_cert, cfg.tls.ssl_key),
                         ("/etc/mailsuite/tls/cert.pem", "/etc/mailsuite/tls/key.pem"))
        self.assertIs(cfg.auth.disable_plaintext_auth, True)
        self.assertEqual(cfg.mailbox.inbox_path(BOSS), "/var/mail/boss")
        self.assertEqual((cfg.mail.alias_maps, cfg.mail.maillog_file, cfg.mail.queue_directory),
                         (["/etc/aliases"], "/var/log/maillog", "/var/spool/mailsuite"))
        self.assertEqual((cfg.auth.passwd_file, cfg.auth.shadow_file),
                         ("/etc/passwd", "/etc/shadow"))
