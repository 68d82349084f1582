"""rspamd as a milter for a benchmark or a test: Debian's rspamd binary started directly (no
systemd) with a minimal configuration in a directory of its own: the proxy worker in milter
mode on 127.0.0.1:PORT, scanning itself (``self_scan``, no separate normal worker), no Redis,
no Lua rules, a two-line TLD list (rspamd compiles the whole public suffix list at start: 7 s
here), and the GTUBE test patterns on (3.4's ``enable_test_patterns``)."""

from __future__ import annotations

import os
import shutil

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"

CONFIG = """\
options {{
    pidfile = "{dir}/rspamd.pid";
    enable_test_patterns = true;
    url_tld = "{dir}/tld.dat";
    dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 0; }}
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "{level}"; }}
actions {{ reject = 15; add_header = 6; rewrite_subject = 8; }}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{port}";
    milter = yes;
    timeout = 60s;
    count = {count};
    upstream "local" {{ default = yes; self_scan = yes; }}
}}
"""


def command(directory: str, port: int, count: int = 1, level: str = "info") -> list[str]:
    """Write the configuration into ``directory``; the command that runs rspamd on it in the
    foreground (``-i``: as root, as the tests and the benchmark run)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tld.dat"), "w") as f:
        f.write("test\ncom\n")
    conf = os.path.join(directory, "rspamd.conf")
    with open(conf, "w") as f:
        f.write(CONFIG.format(dir=directory, port=port, count=count, level=level))
    return [RSPAMD, "-f", "-i", "-c", conf, f"--var=DBDIR={directory}",
            f"--var=RUNDIR={directory}", f"--var=LOGDIR={directory}"]
