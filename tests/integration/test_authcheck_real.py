"""The inbound authentication checks against the real server (issue 13 items 2 and 3).

The server's ``dns_resolver`` is a twisted.names server on 127.0.0.1 (tests/fakemx) holding
SPF, DKIM and DMARC records (valid, forged, missing, broken); the SMTP client runs in a
network namespace (198.51.100.0/24, tests/integration/netns), so the server sees a stranger
on port 25, not loopback (which policyd-spf's skip_addresses default passes over). Each
verdict is read from the Authentication-Results header stored in the mbox and cross-checked
by independent implementations: authres parses our header, dkimpy's own ``dkim.verify`` (its
DNS by dnspython against the same server) checks the DKIM verdicts, and pyspf's
``spf.check2`` with dnspython, in a subprocess, the SPF verdicts.

The DNS server runs on this process's reactor, so every blocking client runs in a thread.
"""

from __future__ import annotations

import base64
import json
import mailbox
import os
import shutil
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from typing import Any

import authres
import authres.arc
import authres.dkim_b
import authres.dmarc
import dkim
from twisted.internet import defer, threads
from twisted.names import dns
from twisted.trial import unittest

from tests import fakemx
from tests.authfakes import Key, txt
from tests.integration import netns
from tests.integration.harness import Site

HERE = os.path.dirname(os.path.abspath(__file__))
CONTEXT = authres.FeatureContext(authres.dkim_b, authres.dmarc, authres.arc)
KEY = Key("good.test", "sel", bits=2048)
ARC_KEY = Key("example.test", "arc", bits=2048)
HELO = "mx.good.test"
SPF_OK = "v=spf1 ip4:198.51.100.0/24 -all"

# pyspf with dnspython against the test DNS server: argv port, then JSON [[ip, sender, helo]]
PYSPF = """
import json, sys
import dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = int(sys.argv[1])
dns.resolver.default_resolver = r
import spf
print(json.dumps([spf.check2(i, s, h)[0] for i, s, h in json.loads(sys.argv[2])]))
"""


def zone() -> dict[tuple[str, int], list[Any]]:
    records: dict[tuple[str, int], list[Any]] = {}

    def put(name: str, payload: Any) -> None:
        records.setdefault((name, dns.TXT), []).append(payload)
    put("good.test", txt(SPF_OK))
    put(HELO, txt(SPF_OK))
    put(KEY.name, KEY.record())
    put("_dmarc.good.test", txt("v=DMARC1; p=reject"))
    put("evil.test", txt("v=spf1 -all"))
    put("quar.test", txt("v=spf1 -all"))
    put("_dmarc.quar.test", txt("v=DMARC1; p=quarantine"))
    put("plain.test", txt("v=spf1 ~all"))  # and no DMARC record
    put("broken.test", txt(SPF_OK))
    put("_dmarc.broken.test", txt("v=DMARC1; p=sometimes"))
    put(ARC_KEY.name, ARC_KEY.record())
    return records


def message(subject: str, sender: str, signed: bool = False, extra: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "boss@example.test"
    msg["Subject"] = subject
    msg["Date"] = "Wed, 02 Dec 2026 04:00:00 +0000"
    msg["Message-ID"] = f"<{subject}@test>"
    msg.set_content(f"This is {subject}.\n")
    data = msg.as_bytes().replace(b"\n", b"\r\n")
    if extra:
        data = extra.replace("\n", "\r\n").encode() + data
    return KEY.sign(data, linesep=b"\r\n") if signed else data


def job(subject: str, mail_from: str, header_from: str, signed: bool = False,
        extra: str = "", auth: list[str] | None = None, tamper: bool = False) -> dict[str, Any]:
    data = message(subject, header_from, signed, extra)
    if tamper:
        data = data.replace(b"This is", b"Now this is")
    return {"subject": subject, "sender": mail_from, "rcpt": "boss@example.test",
            "data": base64.b64encode(data).decode(), "auth": auth}


JOBS = [
    job("pass", "alice@good.test", "alice@good.test", signed=True,
        extra="Authentication-Results: mail.example.test; dmarc=pass header.from=bank.test\n"
              "Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=x@other.test\n"),
    job("forged", "mallory@evil.test", "ceo@good.test"),
    job("quarantined", "bob@quar.test", "bob@quar.test"),
    job("tampered", "alice@good.test", "alice@good.test", signed=True, tamper=True),
    job("nodmarc", "carl@plain.test", "carl@plain.test"),
    job("badrecord", "x@broken.test", "x@broken.test"),
    job("submitted", "boss@example.test", "ceo@good.test", auth=["boss", "secret"],
        extra="Authentication-Results: mail.example.test; dmarc=pass header.from=bank.test\n"),
    job("forwarded", "alice@good.test", "alice@good.test", signed=True),
]
JOBS[-1]["rcpt"] = "fwd@example.test"  # an alias to friend@remote.test: sealed, relayed


class CheckingSite(Site):
    """Listening on the host side of the namespace's veth pair too, ``fwd`` an alias to
    another domain, the ARC key ``arc_key`` (a path) in [auth_checks]."""

    def __init__(self, testcase: unittest.TestCase, host: str, mail: str, arc_key: str) -> None:
        self.host, self.arc_key = host, arc_key
        super().__init__(testcase, aliases="postmaster: boss\nfwd: friend@remote.test\n",
                         mail_extra=mail)

    def ini(self) -> str:
        return super().ini().replace(
            "inet_interfaces = 127.0.0.1", f"inet_interfaces = 127.0.0.1, {self.host}") \
            + f"\n[auth_checks]\narc_key = example.test:arc:{self.arc_key}\n"


def arc_key_file(case: unittest.TestCase) -> str:
    """ARC_KEY's PEM in a file mail_owner can read."""
    directory = tempfile.mkdtemp(prefix="inauth-", dir="/tmp")
    case.addCleanup(shutil.rmtree, directory, True)
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "arc.key")
    with open(path, "wb") as f:
        f.write(ARC_KEY.pem)
    os.chmod(path, 0o644)
    return path


def dnspython_txt(port: int) -> Any:
    """A dkimpy dnsfunc by dnspython, asking the test DNS server (blocking: in a thread)."""
    import dns.resolver as dnspython
    resolver = dnspython.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], port

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        return b"".join(answer[0].strings)
    return dnsfunc


def stored(path: str) -> dict[str, Any]:
    """The messages of an mbox by Subject."""
    if not os.path.exists(path):
        return {}
    return {str(m["Subject"]): m for m in mailbox.mbox(path, create=False)}


class AuthCheckRealTests(unittest.TestCase):
    skip = netns.can_run()
    timeout = 180

    @defer.inlineCallbacks
    def test_verdicts_stored_refused_and_cross_checked(self) -> Any:
        """Each case's verdict in the stored A-R header (ours alone on top, the forged one
        claiming our id removed, another server's kept), 550 5.7.1 for the DMARC p=reject
        forgery, Junk for p=quarantine, no check of an authenticated sender (but its field
        claiming our id removed); dkimpy and
        pyspf (independent DNS by dnspython) agree with our DKIM and SPF verdicts."""
        ns = netns.Namespace(self, prefix="inauth")
        sink_port = fakemx.free_port_on(["127.0.0.2"])
        sinks, sink_ports = fakemx.start_sinks({"127.0.0.2": fakemx.Behaviour()}, sink_port)
        records = zone()
        records.update(fakemx.zone({"remote.test": [(10, "mx.remote.test")]},
                                   {"mx.remote.test": "127.0.0.2"}))
        port, _, ports = fakemx.start_dns(records)
        for p in [*ports, *sink_ports]:
            self.addCleanup(p.stopListening)
        site = CheckingSite(self, ns.host, f"dns_resolver = 127.0.0.1:{port}\n"
                            f"smtp_port = {sink_port}\n", arc_key_file(self))
        site.start()
        jobs_file = os.path.join(site.dir, "jobs.json")
        with open(jobs_file, "w") as f:
            json.dump(JOBS, f)
        out = yield threads.deferToThread(
            ns.run, os.path.join(HERE, "authcheck_client.py"), ns.host,
            str(site.ports["smtp"]), HELO, jobs_file)
        replies = dict(zip([j["subject"] for j in JOBS], json.loads(out), strict=True))
        self.assertEqual(replies["forged"],
                         [550, "5.7.1 rejected by DMARC policy for good.test"])
        self.assertEqual({k: v[0] for k, v in replies.items() if k != "forged"},
                         dict.fromkeys(["pass", "quarantined", "tampered", "nodmarc",
                                        "badrecord", "submitted", "forwarded"], 250))
        inbox = stored(site.inbox("boss"))
        junk = stored(os.path.join(site.home("boss"), "mail", "Junk"))
        self.assertEqual(sorted(inbox), ["badrecord", "nodmarc", "pass", "submitted",
                                         "tampered"])
        self.assertEqual(sorted(junk), ["quarantined"])
        verdicts = {s: self.ours(m) for s, m in {**inbox, **junk}.items() if s != "submitted"}
        self.assertEqual(verdicts["pass"], {
            "spf": [("pass", "alice@good.test"), ("pass", HELO)],
            "dkim": [("pass", "good.test", "sel")], "dmarc": [("pass", "good.test")],
            "arc": [("none", None)]})
        self.assertEqual(verdicts["tampered"]["dkim"], [("fail", "good.test", "sel")])
        self.assertEqual(verdicts["tampered"]["dmarc"], [("pass", "good.test")])  # by SPF
        self.assertEqual(verdicts["quarantined"]["spf"][0], ("fail", "bob@quar.test"))
        self.assertEqual(verdicts["quarantined"]["dmarc"], [("fail", "quar.test")])
        self.assertEqual(verdicts["nodmarc"]["spf"][0], ("softfail", "carl@plain.test"))
        self.assertEqual(verdicts["nodmarc"]["dmarc"], [("none", "plain.test")])
        self.assertEqual(verdicts["badrecord"]["dmarc"], [("permerror", "broken.test")])
        # forged A-R of ours removed, the other server's kept; the submission unchecked
        fields = inbox["pass"].get_all("Authentication-Results")
        self.assertEqual([CONTEXT.parse_value(v).authserv_id for v in fields],
                         ["mail.example.test", "relay.other.test"])
        self.assertNotIn("bank.test", str(fields))
        self.assertIsNone(inbox["submitted"]["Authentication-Results"])  # forged one gone
        self.assertRegex(site.maillog_text(), r"reject: END-OF-MESSAGE from \S+\["
                         + ns.client.replace(".", r"\.") + r"\]: 550 5\.7\.1 rejected by DMARC")
        yield self.cross_check(port, ns.client, inbox, verdicts)
        yield self.forwarded_sealed(sinks["127.0.0.2"], port)

    @defer.inlineCallbacks
    def forwarded_sealed(self, sink: Any, port: int) -> Any:
        """The copy forwarded to friend@remote.test arrives there with our ARC set on top;
        dkimpy (DNS by dnspython) verifies the chain, whose A-R copy holds our verdicts."""
        from twisted.internet import reactor, task
        for _ in range(300):  # the queue sends it at once; at most 30 s
            if sink.received:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([r.recipients for r in sink.received], [["friend@remote.test"]])
        data = sink.received[0].data
        self.assertTrue(data.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256;"
                                        b" d=example.test; s=arc;"), data[:200])
        self.assertIn(b"ARC-Authentication-Results: i=1; mail.example.test;", data)
        self.assertRegex(data, rb"ARC-Authentication-Results: [^:]*dkim=pass header.d=good.test")
        cv, _, reason = yield threads.deferToThread(dkim.arc_verify, data,
                                                    dnsfunc=dnspython_txt(port))
        self.assertEqual(cv, dkim.CV_Pass, reason)

    def ours(self, m: Any) -> dict[str, list[Any]]:
        """The results of our (topmost) A-R header, by method, as authres parses it."""
        header = CONTEXT.parse_value(m.get_all("Authentication-Results")[0])
        self.assertEqual(header.authserv_id, "mail.example.test")
        out: dict[str, list[Any]] = {}
        for r in header.results:
            if r.method == "spf":
                value = (r.result, r.smtp_mailfrom or r.smtp_helo)
            elif r.method == "dkim":
                value = (r.result, r.header_d, r.header_s)
            elif r.method == "dmarc":
                value = (r.result, r.header_from)
            else:
                value = (r.result, None)
            out.setdefault(r.method, []).append(value)
        return out

    @defer.inlineCallbacks
    def cross_check(self, port: int, client: str, inbox: dict[str, Any],
                    verdicts: dict[str, Any]) -> Any:
        """dkimpy's verify and pyspf's check2, their DNS by dnspython, agree with ours."""
        dnsfunc = dnspython_txt(port)
        for subject, expected in (("pass", True), ("tampered", False)):
            data = inbox[subject].as_bytes()
            ok = yield threads.deferToThread(dkim.verify, data, dnsfunc=dnsfunc)
            self.assertEqual(ok, expected, subject)
        cases = [(client, j["sender"], HELO) for j in JOBS if not j["auth"]]
        out = yield threads.deferToThread(
            subprocess.run, [sys.executable, "-c", PYSPF, str(port), json.dumps(cases)],
            capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
        self.assertEqual(out.returncode, 0, out.stderr)
        theirs = dict(zip([j["subject"] for j in JOBS if not j["auth"]],
                          json.loads(out.stdout), strict=True))
        for subject, result in theirs.items():
            if subject in verdicts:
                self.assertEqual(verdicts[subject]["spf"][0][0], result, subject)
        self.assertEqual(theirs["forged"], "fail")
