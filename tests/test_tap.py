"""twistd's side: options, config refusal, and the services assembled from a mail.ini."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from mailsuite import config, listenaddr, tap, tls


def write_config(
    case: unittest.TestCase, listen: str, extra: str = "", tls: str = "ssl = no\n"
) -> str:
    # one process (mail_owner empty): the privilege-separated start is integration-tested
    d = os.path.abspath(case.mktemp())
    os.makedirs(d)
    for name in ("passwd", "shadow", "aliases"):
        open(os.path.join(d, name), "w").close()
    path = os.path.join(d, "mail.ini")
    with open(path, "w") as f:
        f.write(f"""[mail]
myhostname = mail.example.test
inet_interfaces = 127.0.0.1
alias_maps = {d}/aliases
queue_directory = {d}/queue
maillog_file = {d}/maillog
{"" if "mail_owner" in extra else "mail_owner ="}
{extra}
[listen]
{listen}
[auth]
passwd_file = {d}/passwd
shadow_file = {d}/shadow
[mailbox]
mail_location = mbox:~/mail:INBOX={d}/spool/%u
[tls]
{tls.format(d=d)}""")
    return path


NONE_ELSE = "submission = no\nsmtps = no\npop3s = no\nimaps = no\n"


class OptionsTests(unittest.TestCase):
    def test_config_path_order(self) -> None:
        """--config wins, then $MAILSUITE_CONFIG, then /etc/mailsuite/mail.ini."""
        self.patch(os, "environ", {"MAILSUITE_CONFIG": "/env/mail.ini"})
        self.assertEqual(config.config_path("/x/mail.ini"), "/x/mail.ini")
        self.assertEqual(config.config_path(None), "/env/mail.ini")
        self.patch(os, "environ", {})
        self.assertEqual(config.config_path(None), "/etc/mailsuite/mail.ini")

    def refused(self, path: str) -> tuple[int, list[str]]:
        """(exit status, stderr lines) of Options refusing the mail.ini at ``path``."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--config", path])
        return caught.exception.code, err.getvalue().splitlines()

    def test_broken_config_is_refused(self) -> None:
        """A bad key stops twistd before anything is bound: exit 78 and one line per error
        naming file, section and key, without twistd's usage text (it was a UsageError, which
        twistd prints after its whole --help)."""
        path = write_config(self, "smtp = 99999\nimap = x\n" + NONE_ELSE,
                            extra="disable_plaintext_auth = no\n")
        code, lines = self.refused(path)
        self.assertEqual(code, 78)
        self.assertEqual(lines, [
            f"mailsuite: {path}: [mail] disable_plaintext_auth: belongs in [auth]",
            f"mailsuite: {path}: [listen] smtp: port '99999' is not a number from 0 to 65535;"
            " write no or leave it empty to turn the service off",
            f"mailsuite: {path}: [listen] imap: port 'x' is not a number from 0 to 65535;"
            " write no or leave it empty to turn the service off",
        ])

    def test_lmtp_listener_accepted(self) -> None:
        """LMTP, the last [listen] service to arrive, is accepted and served."""
        path = write_config(self, "smtp = 2525\nlmtp = 2024\n" + NONE_ELSE)
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["cfg"].listen.lmtp, 2024)

    def test_unreadable_password_map_is_refused(self) -> None:
        """A missing smtp_sasl_password_maps stops twistd before binding with one line naming
        file, section, key and the map (it was a traceback from makeService)."""
        path = write_config(self, "smtp = 2525\n" + NONE_ELSE,
                            extra="smtp_sasl_password_maps = /nonexistent/sasl_passwd\n")
        self.assertEqual(self.refused(path), (78, [
            f"mailsuite: {path}: [mail] smtp_sasl_password_maps: /nonexistent/sasl_passwd:"
            " No such file or directory"]))

    def test_tls_problem_is_refused(self) -> None:
        """A certificate without its key stops twistd before binding, one line naming both."""
        path = write_config(self, "smtp = 2525\n" + NONE_ELSE,
                            tls="ssl = yes\nssl_cert = {d}/cert.pem\nssl_key = {d}/key.pem\n")
        open(os.path.join(os.path.dirname(path), "cert.pem"), "w").close()
        code, lines = self.refused(path)
        self.assertEqual(code, 78)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], f"^mailsuite: {path}: \\[tls\\]: .*key.pem: missing while")


    def test_unreadable_tls_file_is_refused(self) -> None:
        """A certificate that cannot be read names the file and the reason (OpenSSL's own
        message for it was '; system lib; system lib')."""
        path = write_config(self, "smtp = 2525\n" + NONE_ELSE,
                            tls="ssl = yes\nssl_cert = {d}/cert.pem\nssl_key = {d}/key.pem\n")
        d = os.path.dirname(path)
        os.mkdir(os.path.join(d, "cert.pem"))  # unreadable as a file, even for root
        open(os.path.join(d, "key.pem"), "w").close()
        self.assertEqual(self.refused(path), (78, [
            f"mailsuite: {path}: [tls]: {d}/cert.pem: cannot read the TLS certificate file:"
            " Is a directory"]))

    def test_unreadable_account_files_are_refused(self) -> None:
        """passdb = shadow with a passwd_file or shadow_file that cannot be read (a typo, or
        no root) is refused at start, not at every login."""
        path = write_config(self, "smtp = 2525\n" + NONE_ELSE)
        d = os.path.dirname(path)
        os.unlink(os.path.join(d, "shadow"))
        self.assertEqual(self.refused(path), (78, [
            f"mailsuite: {path}: [auth] shadow_file: {d}/shadow: No such file or directory"]))


class BuildTests(unittest.TestCase):
    def test_one_service_per_listener(self) -> None:
        """Each enabled [listen] service becomes one named listening service; 'no' makes none."""
        path = write_config(self, "smtp = 2525\npop3 = no\nimap = 1143\n" + NONE_ELSE)
        options = tap.Options()
        options.parseOptions(["--config", path])
        top = tap.build(options["cfg"], reactor)
        self.addCleanup(top.maillog.close)
        names = sorted(s.name for s in top)
        self.assertEqual(names, ["control", "imap@127.0.0.1", "pickup", "qmgr", "smtp@127.0.0.1",
                                 "store"])
        self.assertEqual(top.getServiceNamed("smtp@127.0.0.1").endpoint._port, 2525)

    def test_tls_services(self) -> None:
        """ssl = yes: a first start makes the certificate; every service is served, the
        implicit-TLS ones wrapped in TLS, the others offering STARTTLS with the same ServerTLS."""
        listen = ("smtp = 2525\nsubmission = 2587\nsmtps = 2465\npop3 = 2110\npop3s = 2995\n"
                  "imap = 2143\nimaps = 2993\n")
        path = write_config(self, listen, tls="ssl = yes\nssl_cert = {d}/tls/cert.pem\n"
                                              "ssl_key = {d}/tls/key.pem\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(path), "tls", "key.pem")))
        top = tap.build(options["cfg"], reactor, options["tls"])
        self.addCleanup(top.maillog.close)
        self.assertIsInstance(top.tls, tls.ServerTLS)
        by_name = {s.name.split("@")[0]: s.factory for s in top if "@" in s.name}
        self.assertEqual(sorted(s.name for s in top if "@" not in s.name),
                         ["control", "pickup", "qmgr", "store"])
        self.assertEqual(sorted(by_name), sorted(
            ["smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"]))
        for name, factory in by_name.items():
            if name in ("smtps", "pop3s", "imaps"):
                self.assertIsInstance(factory, TLSMemoryBIOFactory, name)
                factory = factory.wrappedFactory
                self.assertTrue(factory.implicit_tls, name)
            else:
                self.assertFalse(factory.implicit_tls, name)
            self.assertIs(factory.server_tls, top.tls, name)
        self.assertEqual(by_name["submission"].service, "submission")
        self.assertEqual(by_name["smtps"].wrappedFactory.service, "smtps")

    def test_imap_ports_share_recent_and_idle(self) -> None:
        """The IMAP factories of ports 143 and 993 share one \\Recent tracker and one IDLE
        poller: a message is recent in one session, whichever port it came in on."""
        path = write_config(self, "imap = 2143\nimaps = 2993\n",
                            tls="ssl = yes\nssl_cert = {d}/tls/cert.pem\n"
                                "ssl_key = {d}/tls/key.pem\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        top = tap.build(options["cfg"], reactor, options["tls"])
        self.addCleanup(top.maillog.close)
        by_name = {s.name.split("@")[0]: s.factory for s in top if "@" in s.name}
        imap, imaps = by_name["imap"], by_name["imaps"].wrappedFactory
        self.assertIs(imap.recent, imaps.recent)
        self.assertIs(imap.idle_poller, imaps.idle_poller)

    def test_listen_addresses(self) -> None:
        """inet_interfaces: a list is used as is; loopback-only always includes 127.0.0.1,
        and ::1 where IPv6 works; all is one wildcard socket, IPv6's where IPv6 works (the
        probe that binds a socket is faked: tests/integration/ bind)."""
        self.assertEqual(tap.listen_addresses(["192.0.2.1", "::1"]), ["192.0.2.1", "::1"])
        for ipv6, loopback, wildcard in ((True, ["127.0.0.1", "::1"], ["::"]),
                                         (False, ["127.0.0.1"], ["0.0.0.0"])):
            self.patch(listenaddr, "_can_bind", lambda family, address, ipv6=ipv6: ipv6)
            self.assertEqual(tap.listen_addresses(["loopback-only"]), loopback)
            self.assertEqual(tap.listen_addresses(["all"]), wildcard)


class LightImportTests(unittest.TestCase):
    def test_acme_is_imported_only_when_used(self) -> None:
        """The server's modules (master, zygote: network process and agents) do not load
        certbot's ``acme`` and ``requests`` (7 MB of each process) unless [tls] acme = yes."""
        self.assertEqual(self.loaded("mailsuite.tap, mailsuite.privsep.netproc, "
                                     "mailsuite.privsep.agent", ("acme", "josepy", "requests")),
                         [])

    def loaded(self, modules: str, wanted: tuple[str, ...]) -> list[str]:
        code = (f"import sys, {modules};"
                f"print(' '.join(sorted(m for m in {wanted!r} if m in sys.modules)))")
        top = os.path.dirname(os.path.dirname(os.path.abspath(tap.__file__)))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True, env=dict(os.environ, PYTHONPATH=top))
        return out.stdout.split()

    def test_master_runs_without_the_doors(self) -> None:
        """The privsep master (tap and what build_master uses) does not load the doors, the
        queue, the store or the filters' libraries: 890 modules and 71 MB were 591 and 57.
        The network process's image has every one of them (it imports them before it drops
        root: it runs as mail_owner, which may not be able to read the server's Python); the
        agent's (the zygote's) has the store and the IMAP and POP3 servers, not the rest."""
        from mailsuite.privsep import netproc
        stores = ("mailsuite.imap.server", "mailsuite.pop3.server", "mailsuite.store.mbox")
        doors = ("mailsuite.smtp.server", "mailsuite.mta.queue", "mailsuite.filter.authcheck",
                 "mailsuite.metrics", "dkim", "dns.resolver", "prometheus_client", "twisted.web")
        heavy = stores + doors
        self.assertEqual(self.loaded("mailsuite.tap, mailsuite.privsep.master", heavy), [])
        wanted = tuple(sorted({*heavy, *netproc.SERVER_MODULES}))
        self.assertEqual(self.loaded("mailsuite.privsep.netproc", wanted), list(wanted))
        self.assertEqual(self.loaded("mailsuite.privsep.agent", heavy), sorted(stores))

    def test_every_import_where_used_is_preloaded(self) -> None:
        """Each module tap and the filters import inside a function (so that the master does
        without it) is in netproc.SERVER_MODULES, which the network process imports before it
        drops root."""
        from mailsuite.privsep import netproc
        found = set()
        for path in ("tap.py", "filter/__init__.py", "filter/dkim.py"):
            found |= _imports_in_functions(os.path.join(os.path.dirname(tap.__file__), path))
        # the master's own (root: it reads anything), and twistd's reactor
        found -= {"mailsuite.acme.service", "mailsuite.privsep.master", "twisted.internet"}
        self.assertEqual(sorted(found - set(netproc.SERVER_MODULES)), [])

    def test_agent_image_has_what_it_imports_where_used(self) -> None:
        """Every module a function of the agent's image (the zygote's: the agent's module
        and what it imports) imports where it is used is in that image: an agent runs as
        its user, who may not be able to read the server's Python."""
        code = ("import sys, mailsuite.privsep.agent;"
                "print('\\n'.join(f'{n} {getattr(m, \"__file__\", None)}'"
                " for n, m in sys.modules.items()))")
        top = os.path.dirname(os.path.dirname(os.path.abspath(tap.__file__)))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True, env=dict(os.environ, PYTHONPATH=top))
        image = dict(line.split(" ", 1) for line in out.stdout.splitlines())
        self.assertIn("mailsuite.imap.server", image)
        missing = {name for module, path in image.items()
                   if module.startswith("mailsuite.") and path.endswith(".py")
                   for name in _imports_in_functions(path) if name not in image}
        self.assertEqual(sorted(missing), [])


def _imports_in_functions(path: str) -> set[str]:
    """The modules the functions of the module at ``path`` import."""
    import ast
    with open(path, "rb") as f:
        tree = ast.parse(f.read())
    found = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.update(_module_of(node.module, a.name) for a in node.names)
    return found


def _module_of(module: str, name: str) -> str:
    """What ``from module import name`` imports: the submodule ``name``, else ``module``."""
    import importlib.util
    try:
        return f"{module}.{name}" if importlib.util.find_spec(f"{module}.{name}") else module
    except (ModuleNotFoundError, ValueError):  # ``module`` is no package (or the reactor)
        return module
