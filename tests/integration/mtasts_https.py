"""An HTTPS server for MTA-STS policies, run by tests/integration/test_mtasts.py inside a network
namespace of its own (``ip netns exec NAME python mtasts_https.py ...``) so that it can bind
port 443. Python's http.server with ssl; the answer depends on the Host header's domain:

- ``mta-sts.redirect.*``: 301 to the good policy (must not be followed);
- ``mta-sts.ctype.*``: the policy as text/html (must be refused);
- ``mta-sts.big.*``: 70,000 bytes of text/plain (over the 64 KB limit);
- ``mta-sts.slow.*``: the answer after 5 seconds;
- any other: the file ``POLICY_DIR/<domain>`` as ``text/plain; charset=utf-8``, 404 without.

Usage: mtasts_https.py ADDRESS PORT CERT KEY POLICY_DIR; prints "ready" once listening; ends on
SIGTERM, or when its parent (the test) is gone (stdin closed).
"""

from __future__ import annotations

import http.server
import os
import ssl
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    policy_dir = ""

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        domain = host.removeprefix("mta-sts.")
        if self.path != "/.well-known/mta-sts.txt":
            return self.answer(404, "text/plain", b"not found\n")
        if domain.startswith("redirect."):
            self.send_response(301)
            self.send_header("Location", "https://mta-sts.good.example.test/.well-known/"
                             "mta-sts.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if domain.startswith("slow."):
            time.sleep(5)
        if domain.startswith("big."):
            return self.answer(200, "text/plain", b"x" * 70000)
        path = os.path.join(self.policy_dir, os.path.basename(domain))
        if domain.startswith("ctype."):
            path = os.path.join(self.policy_dir, "good.example.test")
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return self.answer(404, "text/plain", b"no policy\n")
        kind = "text/html" if domain.startswith("ctype.") else "text/plain; charset=utf-8"
        return self.answer(200, kind, body)

    def answer(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("mtasts_https: " + format % args + "\n")


def main() -> None:
    address, port, cert, key, policy_dir = sys.argv[1:6]
    Handler.policy_dir = policy_dir
    server = http.server.ThreadingHTTPServer((address, int(port)), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
