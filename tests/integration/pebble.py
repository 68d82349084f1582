"""Debian's ``pebble`` (Let's Encrypt's test ACME server) on loopback for the ACME tests.

``Pebble(testcase, http_port, dns_port)`` writes a config (ACME directory and management
interface on free loopback ports, a TLS certificate for 127.0.0.1 from a throw-away CA:
Debian ships no test certificate), starts ``pebble -config FILE -dnsserver 127.0.0.1:PORT``
with no artificial sleeps and no rejected nonces, and stops it at clean-up. Its validation
authority fetches ``http://NAME:http_port/.well-known/acme-challenge/TOKEN`` after looking NAME
up on our DNS server.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request


from tests.acmefakes import ca_signed
from tests.integration.harness import free_port, terminate, wait_ports

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
SKIP = None if os.path.exists(PEBBLE) else \
    "pebble is not installed (scripts/setup-debian.sh test installs it)"
START_TIMEOUT = 20.0
NAME = "acme.test"  # pebble's name in the tests' DNS (no resolver but ours knows it)


class Pebble:
    def __init__(self, testcase, http_port: int, dns_port: int, validity: int = 0) -> None:
        """``validity``: seconds the certificates it issues are valid (0: pebble's default)."""
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        import datetime
        chain, key, ca = ca_signed([NAME, "localhost"], days=30,
                                   start=datetime.datetime.now(datetime.UTC), ip="127.0.0.1")
        self.tls_ca = self._write("tls-ca.pem", ca)  # what acme_ca_file names
        cert = self._write("cert.pem", chain)
        key_file = self._write("key.pem", key)
        self.port, self.management = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": cert, "privateKey": key_file,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        if validity:
            config["pebble"]["certificateValidityPeriod"] = validity
        path = self._write("pebble.json", json.dumps(config).encode())
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        self.output = open(os.path.join(self.dir, "pebble.log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [PEBBLE, "-config", path, "-dnsserver", f"127.0.0.1:{dns_port}"],
            cwd=self.dir, env=env, stdout=self.output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        testcase.addCleanup(self.stop)
        #: by name: our DNS server must say where (the client looks up through dns_resolver)
        self.directory = f"https://{NAME}:{self.port}/dir"

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def wait(self) -> None:
        """(blocking) Until both ports accept, bounded."""
        wait_ports((self.port, self.management), START_TIMEOUT, "pebble", self.log, self.process)

    def root(self) -> bytes:
        """(blocking) The PEM of the root pebble signs with (management interface)."""
        context = ssl.create_default_context(cafile=self.tls_ca)
        context.check_hostname = False
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            pem = answer.read()
        return pem

    def log(self) -> str:
        with open(os.path.join(self.dir, "pebble.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        terminate(self.process)
        self.output.close()
