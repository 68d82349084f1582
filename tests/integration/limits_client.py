"""The remote client of test_limits_network, run inside a network namespace.

    python limits_client.py HOST PORT SOURCE N [--send LINE] [--lines K] [--close-each]
                            [--then SOURCE2]

Opens N connections to HOST:PORT from address SOURCE, one after another, keeping them open
(``--close-each``: closing each before the next). On each it reads the first line, and when that
is not a refusal sends LINE (``\\n`` in it separates lines) and reads K reply lines. With
``--then``, one more connection from SOURCE2 while the others are still open. Prints one JSON
line per connection: ``{"source": ..., "greeting": ..., "reply": [...]}`` (null / fewer lines
where the server closed first). Every read has brute_client's timeout (60 s).
"""

from __future__ import annotations

import argparse
import json

from brute_client import Conn  # (this directory is sys.path[0] of a script run from it)

REFUSALS = ("421", "* BYE", "-ERR")


def exchange(args: argparse.Namespace, source: str) -> tuple[Conn, dict]:
    conn = Conn(args.host, args.port, source)
    greeting = conn.line()
    reply: list[str] = []
    if args.send and greeting is not None and not greeting.startswith(REFUSALS):
        conn.sock.sendall(args.send.replace("\\n", "\r\n").encode() + b"\r\n")
        for _ in range(args.lines):
            line = conn.line()
            if line is None:
                break
            reply.append(line)
    return conn, {"source": source, "greeting": greeting, "reply": reply}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("source")
    p.add_argument("n", type=int)
    p.add_argument("--send", default="")
    p.add_argument("--lines", type=int, default=1)
    p.add_argument("--close-each", action="store_true")
    p.add_argument("--then", default="")
    args = p.parse_args()
    held = []
    sources = [args.source] * args.n + ([args.then] if args.then else [])
    for source in sources:
        conn, result = exchange(args, source)
        print(json.dumps(result), flush=True)
        if args.close_each:
            conn.sock.close()
        else:
            held.append(conn)
    for conn in held:
        conn.sock.close()


if __name__ == "__main__":
    main()
