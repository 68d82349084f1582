#!/usr/bin/env python3
"""mailsuite's benchmark: our figures beside Postfix + Dovecot's, in one run (Debian, as root).

    python3 bench/run.py                 # --quick: small mailboxes, 1 repetition (~10 min)
    python3 bench/run.py --full          # issue sizes (100,000-message INBOX, 2,000 IDLE), 3 reps
    python3 bench/run.py --only imap-big --big-k 30000 --no-peers --out /tmp/r.jsonl

Starts mailsuite from this checkout (twistd, PYTHONPATH=checkout) on 127.0.0.1:2025/2110/2143
with a generated mail.ini (real /etc/passwd + /etc/shadow, users bench1..bench10 / benchpass,
INBOXes in WORKDIR/spool, its own maillog), runs ../shared/bench/mailbench.py against it and,
when installed (setup_peers.sh install), against Postfix (:2525) + Dovecot (:1143/:1110), and
prints the table. See bench/README.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import imap_ext
import probe
import report
import rspamd_milter

CHECKOUT = os.path.dirname(HERE)


def _mailbench_dir() -> str:
    """$MAILBENCH_DIR, else ../shared/bench beside this checkout or, from a git worktree,
    beside the repository it belongs to (``git rev-parse --git-common-dir``)."""
    if os.environ.get("MAILBENCH_DIR"):
        return os.environ["MAILBENCH_DIR"]
    beside = os.path.normpath(os.path.join(CHECKOUT, "..", "shared", "bench"))
    if os.path.isdir(beside):
        return beside
    try:
        common = subprocess.run(["git", "-C", CHECKOUT, "rev-parse", "--git-common-dir"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return beside
    main = os.path.dirname(os.path.abspath(os.path.join(CHECKOUT, common.strip())))
    return os.path.normpath(os.path.join(main, "..", "shared", "bench"))


MAILBENCH_DIR = _mailbench_dir()
NUSERS = 10
PASSWORD = "benchpass"
OURS, PEER = "mailsuite", "postfix+dovecot"
#: seconds imap-idle-conns waits after opening its sessions before it measures (both servers):
#: long enough for the steady state of a server that moves idle sessions out of the
#: processes holding mail (Dovecot's imap_hibernate_timeout, mailsuite's 5 s, then 5 s
#: until an agent with nothing attached exits)
IDLE_HOLD = 15

WORKLOADS = ("smtp-deliver", "pop3-retr", "imap-big", "imap-ext", "imap-idle-conns", "logins",
             "slow-crowd", "smtp-milter", "smtp-authcheck")
report.METRICS["imap-ext"] = imap_ext.METRICS
#: slow-crowd (issue 11 item 3): connections, one byte every INTERVAL s from 40 loopback
#: addresses; mailsuite's default deadlines (smtpd_timeout, login_idle_timeout)
CROWD, CROWD_INTERVAL = 1000, 10.0
CROWD_DEADLINES = {"smtp-line": 300.0, "smtp-data": 300.0, "imap": 60.0, "pop3": 60.0}


@dataclass(frozen=True)
class Size:
    repeat: int
    smtp_m: int
    pop3_n: int
    pop3_dele: bool
    big_k: list[int]
    idle_c: int
    login_seq: int
    login_conc: int
    noise: list[str]


SIZES = {
    "quick": Size(repeat=1, smtp_m=1000, pop3_n=200, pop3_dele=False, big_k=[10000], idle_c=500,
                  login_seq=100, login_conc=200,
                  noise=["--wait-quiet", "30", "--wait-quiet-max", "30"]),
    "full": Size(repeat=3, smtp_m=3000, pop3_n=1000, pop3_dele=True, big_k=[10000, 100000],
                 idle_c=2000, login_seq=200, login_conc=500,
                 noise=["--wait-quiet", "25", "--wait-quiet-max", "60", "--max-other-pct", "25",
                        "--noise-retries", "2"]),
}
NOFILE = 20000


def log(text: str) -> None:
    print(f"== {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def sh(cmd: str | list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, **kw)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def find_python(explicit: str | None) -> str:
    """A Python that has Twisted and pyOpenSSL (mailsuite's dependencies) installed."""
    candidates = [explicit] if explicit else [
        sys.executable, "/opt/mailsuite/bin/python", "/opt/msdev/bin/python"]
    for py in candidates:
        if py and os.path.exists(py) and subprocess.run(
                [py, "-c", "import twisted, OpenSSL, zope.interface"], check=False,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return py
    sys.exit(f"no Python with Twisted found among {candidates}; pass --python "
             "(e.g. after `sh scripts/setup-debian.sh run`: /opt/mailsuite/bin/python)")


def find_pyspy(python: str) -> str:
    for candidate in (shutil.which("py-spy"), os.path.join(os.path.dirname(python), "py-spy"),
                      "/opt/msdev/bin/py-spy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("--profile needs py-spy: pip install py-spy (into any venv; it profiles by pid)")


# -- the servers ----------------------------------------------------------------------------------


class Server:
    """What mailbench needs to know about one server under test."""

    name: str
    ports: dict[str, int]
    mbox_template: str
    #: shell command that waits until the server's last work on the mailboxes is done
    settle = "true"
    reset_index: str

    def accounting(self, workload: str) -> list[str]:
        raise NotImplementedError

    def roots(self) -> list[int]:
        """The server's root processes (imap-ext sums the memory of their trees)."""
        raise NotImplementedError


class Mailsuite(Server):
    """mailsuite from this checkout, under twistd, on its own ports, spool and maillog."""

    name = OURS

    def __init__(self, workdir: str, python: str, ports: dict[str, int], checkout: str,
                 mail_owner: str | None = None) -> None:
        self.mail_owner = mail_owner  # [mail] mail_owner (None: the checkout's default)
        self.extra_mail = ""  # more [mail] lines (smtp-milter: smtpd_milters)
        self.extra_sections = ""  # more sections (smtp-authcheck: [auth_checks])
        self.workdir = workdir
        self.checkout = checkout
        self.python = python
        self.ports = ports
        # WORKDIR/users/USER/INBOX (the mbox) and WORKDIR/users/USER/mail (folders, .imap index):
        # mailsuite creates index directories only under the home or the INBOX's directory
        self.users_dir = os.path.join(workdir, "users")
        self.mbox_template = os.path.join(self.users_dir, "{user}", "INBOX")
        self.reset_index = f"rm -rf {shlex.quote(self.users_dir)}/*/mail/.imap"
        # mailsuite answers EXPUNGE (and POP3 QUIT) before it rewrites the mbox: the next run's
        # mailbox is put in place once that rewrite (its temp file and dotlock) is over, or the
        # rewrite finds a replaced file and reads it again in the background (a "cold" SELECT
        # would find it parsed). At most 60 s.
        d = shlex.quote(self.users_dir)
        self.settle = (f"for i in $(seq 600); do ls {d}/*/.*.mailsuite-rewrite {d}/*/*.lock "
                       f"2>/dev/null | grep -q . || break; sleep 0.1; done")
        self.config = os.path.join(workdir, "mail.ini")
        self.log_path = os.path.join(workdir, "twistd.log")
        self.process: subprocess.Popen | None = None

    def prepare(self, users: list[str]) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        os.makedirs(os.path.join(self.workdir, "queue"), exist_ok=True)
        for user in users:
            pw = pwd.getpwnam(user)
            for d in (os.path.join(self.users_dir, user), os.path.join(self.users_dir, user, "mail")):
                os.makedirs(d, exist_ok=True)
                os.chown(d, pw.pw_uid, _mail_gid())
                os.chmod(d, 0o2770)
        with open(os.path.join(self.workdir, "aliases"), "w") as f:
            f.write("postmaster: bench1\n")
        w = self.workdir
        with open(self.config, "w") as f:
            f.write(f"""\
# Written by bench/run.py: mailsuite beside Postfix + Dovecot, on its own ports and files.
[mail]
myhostname = mailsuite-bench.test
mydomain = bench.test
mydestination = $myhostname, bench.test, localhost
inet_interfaces = 127.0.0.1
alias_maps = {w}/aliases
queue_directory = {w}/queue
maillog_file = {w}/maillog
{"" if self.mail_owner is None else f"mail_owner = {self.mail_owner}"}
{self.extra_mail}

[listen]
smtp = {self.ports['smtp']}
submission = no
smtps = no
pop3 = {self.ports['pop3']}
pop3s = no
imap = {self.ports['imap']}
imaps = no
lmtp = no

[auth]
passdb = shadow
passwd_file = /etc/passwd
shadow_file = /etc/shadow
first_valid_uid = 1000
disable_plaintext_auth = no

[mailbox]
mail_location = mbox:{self.users_dir}/%u/mail:INBOX={self.users_dir}/%u/INBOX

{self._limits()}
[tls]
ssl = no

{self.extra_sections}
""")

    def _limits(self) -> str:
        """Raised as for the Dovecot peer (peers/dovecot-local.conf), only so that
        imap-idle-conns (2,000 sessions from 127.0.0.1 over 10 users) is not refused (defaults
        10 and 1024); nothing for a checkout that has no such keys (a before/after run)."""
        text = ""
        for name in ("config.py", "configschema.py"):  # the keys moved to configschema.py
            with contextlib.suppress(OSError), \
                    open(os.path.join(self.checkout, "mailsuite", name)) as f:
                text += f.read()
        if '"process_limit"' not in text:
            return ""
        return ("[imap]\nmail_max_userip_connections = 5000\nprocess_limit = 5000\n\n"
                "[pop3]\nmail_max_userip_connections = 5000\nprocess_limit = 5000\n")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        busy = [p for p in self.ports.values() if port_open(p)]
        if busy:
            sys.exit(f"ports {busy} are already in use; pick others with --ports")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [self.python, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "mailsuite", "--config", self.config],
                cwd=self.workdir, env=dict(os.environ, PYTHONPATH=self.checkout),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while not all(port_open(p) for p in self.ports.values()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self.log_path, errors="replace") as f:
                    tail = f.read()[-3000:]
                sys.exit(f"mailsuite did not start:\n{tail}")
            time.sleep(0.1)
        log(f"mailsuite started, pid {self.pid}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def accounting(self, workload: str) -> list[str]:
        return ["--server-pid", str(self.pid)]

    def roots(self) -> list[int]:
        return [self.pid]


class Peers(Server):
    """Postfix (:2525, local(8) into /var/mail) + Dovecot (:1143, :1110), as setup_peers.sh sets them."""

    name = PEER
    mbox_template = "/var/mail/{user}"
    reset_index = "rm -rf /home/bench*/mail/.imap"

    def __init__(self) -> None:
        self.ports = {"smtp": 2525, "pop3": 1110, "imap": 1143}
    POSTFIX_PID = "/var/spool/postfix/pid/master.pid"
    DOVECOT_PID = "/run/dovecot/master.pid"

    def accounting(self, workload: str) -> list[str]:
        pidfile = self.POSTFIX_PID if workload == "smtp-deliver" else self.DOVECOT_PID
        return ["--server-pidfile", pidfile]

    def roots(self) -> list[int]:
        """Dovecot's master (imap-ext: its imap, login, auth, ... processes are below it)."""
        with contextlib.suppress(OSError, ValueError), open(self.DOVECOT_PID) as f:
            return [int(f.read().split()[0])]
        return []

    @staticmethod
    def installed() -> bool:
        return all(os.path.exists(p) for p in ("/usr/sbin/postfix", "/usr/sbin/dovecot",
                                               "/etc/dovecot/local.conf"))

    def running(self) -> bool:
        return all(port_open(p) for p in self.ports.values())


def _mail_gid() -> int:
    import grp

    return grp.getgrnam("mail").gr_gid


def ensure_users(users: list[str]) -> None:
    """bench1..bench10 with password benchpass, as setup_peers.sh install makes them."""
    missing = []
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            missing.append(user)
    if not missing:
        return
    log(f"creating users {' '.join(missing)} (useradd -m; chpasswd)")
    for user in missing:
        sh(["useradd", "-m", "-s", "/bin/bash", user])
    sh(["chpasswd"], input="".join(f"{u}:{PASSWORD}\n" for u in users), text=True)


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    debian = ""
    if os.path.exists("/etc/debian_version"):
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "debian": debian, "hostname": socket.gethostname()}


def checkout_commit(checkout: str) -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", checkout, *a], check=False, capture_output=True,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "mailsuite", "twisted")
    return commit + ("+dirty" if dirty else "")


def snapshot(checkout: str, workdir: str) -> str:
    """HEAD of ``checkout`` exported (git archive) to WORKDIR/src; the directory to run."""
    dest = os.path.join(workdir, "src")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", checkout, "archive", "HEAD"], check=True,
                             stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


# -- running mailbench ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, python: str, ours: Mailsuite, peer: Peers | None):
        self.args = args
        self.python = python
        self.mailbench = os.path.join(MAILBENCH_DIR, "mailbench.py")
        self.mb = f"{shlex.quote(sys.executable)} {shlex.quote(self.mailbench)}"
        self.ours = ours
        self.peer = peer
        self.size = SIZES[args.mode]
        self.groups: list[report.Group] = []
        self.profiles: list[str] = []
        self.pyspy = find_pyspy(python) if args.profile else ""

    # mailbox preparation commands (run by mailbench's --before-each, so before every repetition)

    def gen(self, server: Server, k: int, users: str = f"--nusers {NUSERS}") -> str:
        return (f"{server.settle} && {self.mb} gen-mailbox --format mbox --path-template "
                f"{shlex.quote(server.mbox_template)} -k {k} {users} >/dev/null")

    def truncate(self, server: Server) -> str:
        paths = " ".join(shlex.quote(server.mbox_template.format(user=f"bench{i}"))
                         for i in range(1, NUSERS + 1))
        return f"{server.settle}; for f in {paths}; do [ -e \"$f\" ] && : > \"$f\"; done; true"

    def big_cache(self, k: int) -> str:
        """A K-message mbox for bench1, generated once (fixed seed) and copied for every run."""
        cache = os.path.join(self.args.workdir, "cache")
        path = os.path.join(cache, f"big-{k}.mbox")
        if not os.path.exists(path):
            os.makedirs(cache, exist_ok=True)
            log(f"generating the {k:,}-message mailbox (once) -> {path}")
            sh(f"{self.mb} gen-mailbox --format mbox --path-template "
               f"{shlex.quote(os.path.join(cache, 'big-' + str(k) + '.{user}'))} "
               f"--user bench1 -k {k} --no-chown >/dev/null")
            os.rename(os.path.join(cache, f"big-{k}.bench1"), path)
        return path

    def install_big(self, server: Server, k: int) -> str:
        dest = server.mbox_template.format(user="bench1")
        return (f"{server.settle} && install -o bench1 -g mail -m 600 "
                f"{shlex.quote(self.big_cache(k))} {shlex.quote(dest)}")

    # one workload against one server

    def group(self, workload: str, variant: str, params: dict) -> report.Group:
        g = report.Group(workload, variant, params, {}, {})
        self.groups.append(g)
        return g

    def run(self, g: report.Group, server: Server, args: list[str], before: str | None,
            settle: float = 1, timeout: int = 900, profile_as: str | None = None,
            repeat: int | None = None) -> None:
        cmd = [sys.executable, self.mailbench, g.workload, "--label", server.name,
               "--repeat", str(repeat or self.repeats),
               "--json-out", self.args.out, "--timeout", str(timeout),
               *(shlex.split(self.args.noise) if self.args.noise is not None else self.size.noise),
               *server.accounting(g.workload), *args]
        if before:
            cmd += ["--before-each", before, "--settle", str(settle), "--before-timeout", "1800"]
        log(f"{g.workload} {g.variant} -> {server.name}")
        name = profile_as or f"{g.workload}-{g.variant}".replace(" ", "_").replace("=", "")
        spy = self._spy(server, name)
        try:
            proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
        finally:
            self._unspy(spy)
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        runs = [d for d in lines if d.get("ok") and not d.get("summary") and not d.get("discarded")]
        errors = [str(d.get("error")) for d in lines if d.get("ok") is False]
        if proc.returncode and not errors:
            errors.append(f"mailbench exited {proc.returncode}")
        g.runs.setdefault(server.name, []).extend(runs)
        if errors:
            g.errors.setdefault(server.name, []).extend(errors)
            log(f"  FAILED: {errors[-1][:300]}")

    @property
    def repeats(self) -> int:
        return int(self.args.repeat or self.size.repeat)

    def servers(self) -> list[Server]:
        return [self.ours] + ([self.peer] if self.peer else [])

    def each_server(self, fn) -> None:
        """Run fn(server) against a freshly started mailsuite, then against the peers."""
        for server in self.servers():
            if server is self.ours:
                self.ours.start()
                try:
                    fn(server)
                finally:
                    self.ours.stop()
            else:
                fn(server)

    # the workloads

    def smtp_deliver(self) -> None:
        c, m = self.args.smtp_c, self.args.smtp_m or self.size.smtp_m
        g = self.group("smtp-deliver", f"C={c} M={m}", {"c": c, "m": m})
        self.each_server(lambda s: self.run(g, s, [
            "--port", str(s.ports["smtp"]), "-c", str(c), "-m", str(m), "-r", str(NUSERS),
            "--body-size", "4096", "--mbox-template", s.mbox_template],
            f"{self.truncate(s)}; {s.reset_index}"))

    def _smtp_deliver_ours(self, g: report.Group, c: int, m: int) -> None:
        """One smtp-deliver run against mailsuite as it is configured now (started here)."""
        self.ours.start()
        self.run(g, self.ours, [
            "--port", str(self.ours.ports["smtp"]), "-c", str(c), "-m", str(m), "-r",
            str(NUSERS), "--body-size", "4096", "--mbox-template", self.ours.mbox_template],
            f"{self.truncate(self.ours)}; {self.ours.reset_index}")

    def smtp_milter(self) -> None:
        """smtp-deliver against mailsuite without, then with rspamd as its smtpd_milters, in
        the same run: the milter's cost per message (mailsuite only)."""
        if not os.path.exists(rspamd_milter.RSPAMD):
            log("smtp-milter: rspamd is not installed (apt-get install rspamd): skipped")
            return
        c, m = self.args.smtp_c, self.args.smtp_m or self.size.smtp_m
        port = self.args.rspamd_port
        directory = os.path.join(self.args.workdir, "rspamd")
        users = [f"bench{i}" for i in range(1, NUSERS + 1)]
        for variant in ("no milter", "rspamd milter"):
            g = self.group("smtp-deliver", f"C={c} M={m} {variant}", {"c": c, "m": m})
            rspamd = None
            if variant != "no milter":
                with open(os.path.join(directory + ".out"), "ab") as out:
                    rspamd = subprocess.Popen(
                        rspamd_milter.command(directory, port, count=2, level="warning"),
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                deadline = time.monotonic() + 60
                while not port_open(port) and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.ours.extra_mail = f"smtpd_milters = inet:127.0.0.1:{port}"
            self.ours.prepare(users)
            try:
                self._smtp_deliver_ours(g, c, m)
            finally:
                self.ours.stop()
                self.ours.extra_mail = ""
                if rspamd is not None:
                    os.killpg(rspamd.pid, signal.SIGTERM)
                    rspamd.wait(30)
        self.ours.prepare(users)

    def smtp_authcheck(self) -> None:
        """smtp-deliver against mailsuite with the inbound SPF/DKIM/DMARC checks off, then on
        (issue 13; mailsuite only): loopback made a stranger (not in mynetworks or
        skip_addresses), the records on bench/authcheck_dns.py, a twisted.names server on
        127.0.0.1 (``--dns-port``). Each message costs SPF of MAIL FROM and HELO and DMARC
        (mailbench does not sign: no DKIM key query)."""
        c, m = self.args.smtp_c, self.args.smtp_m or self.size.smtp_m
        port = self.args.dns_port
        users = [f"bench{i}" for i in range(1, NUSERS + 1)]
        here = os.path.dirname(os.path.abspath(__file__))
        for variant in ("checks off", "checks on"):
            g = self.group("smtp-deliver", f"C={c} M={m} {variant}", {"c": c, "m": m})
            dns = None
            self.ours.extra_mail = "mynetworks = 192.0.2.0/24"
            self.ours.extra_sections = "[auth_checks]\nenabled = no\n"
            if variant == "checks on":
                dns = subprocess.Popen([self.python, os.path.join(here, "authcheck_dns.py"),
                                        str(port)], start_new_session=True)
                time.sleep(1)
                self.ours.extra_mail += f"\ndns_resolver = 127.0.0.1:{port}"
                self.ours.extra_sections = "[auth_checks]\nskip_addresses = 192.0.2.0/24\n"
            self.ours.prepare(users)
            try:
                self._smtp_deliver_ours(g, c, m)
            finally:
                self.ours.stop()
                self.ours.extra_mail = self.ours.extra_sections = ""
                if dns is not None:
                    os.killpg(dns.pid, signal.SIGTERM)
                    dns.wait(30)
        self.ours.prepare(users)

    def pop3_retr(self) -> None:
        n = self.args.pop3_n or self.size.pop3_n
        for dele in (False, True) if self.size.pop3_dele else (False,):
            self._pop3_retr(n, dele)

    def _pop3_retr(self, n: int, dele: bool) -> None:
        g = self.group("pop3-retr", f"C=10 N={n}" + (" DELE" if dele else ""),
                       {"n": n, "dele": dele})
        self.each_server(lambda s: self.run(g, s, [
            "--port", str(s.ports["pop3"]), "-c", str(NUSERS), "--expect", str(n),
            *(["--dele"] if dele else [])],
            f"{self.gen(s, n)} && {s.reset_index}"))

    def imap_big(self) -> None:
        for k in self.args.big_k or self.size.big_k:
            self.big_cache(k)
            g = self.group("imap-big", f"K={k}", {"k": k})
            p = self.group("imap-noop-probe", f"K={k}", {"k": k})
            self.each_server(lambda s, g=g, p=p, k=k: self._imap_big(g, p, s, k))

    def _imap_big(self, g: report.Group, p: report.Group, s: Server, k: int) -> None:
        self.run(g, s, ["--port", str(s.ports["imap"]), "--user", "bench1", "--expect", str(k)],
                 f"{self.install_big(s, k)} && {s.reset_index}", settle=2,
                 timeout=max(900, k // 20))
        # while bench1's INBOX is parsed from scratch, bench2 NOOPs on another connection
        sh(f"{self.install_big(s, k)} && {self.gen(s, 20, '--user bench2')} && {s.reset_index}")
        time.sleep(2)
        spy = self._spy(s, f"imap-noop-probe-K{k}")
        try:
            r = probe.noop_during_select(s.ports["imap"], "bench1", "bench2", PASSWORD)
            line = {"workload": "imap-noop-probe", "label": s.name, "ok": True,
                    "variant": f"K={k}", "results": r}
            p.runs[s.name] = [line]
        except (OSError, RuntimeError) as e:
            line = {"workload": "imap-noop-probe", "label": s.name, "ok": False,
                    "error": f"{type(e).__name__}: {e}"}
            p.errors[s.name] = [line["error"]]
        finally:
            self._unspy(spy)
        with open(self.args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        log(f"imap-noop-probe K={k} -> {s.name}: {line.get('results') or line['error']}")

    def imap_ext(self) -> None:
        """Issue 15's workloads at the big INBOX (``imap_ext``), in this process."""
        for k in self.args.big_k or self.size.big_k:
            self.big_cache(k)
            g = self.group("imap-ext", f"K={k}", {"k": k})
            for _ in range(self.repeats):
                self.each_server(lambda s, g=g, k=k: self._imap_ext(g, s, k))

    def _imap_ext(self, g: report.Group, s: Server, k: int) -> None:
        sh(f"{self.install_big(s, k)} && {s.reset_index}")
        time.sleep(2)
        log(f"imap-ext K={k} -> {s.name}")
        args = argparse.Namespace(port=s.ports["imap"], user="bench1", password=PASSWORD,
                                  label=s.name, expect=k, seed=15, timeout=max(900, k // 20),
                                  server_pid=s.roots())
        spy = self._spy(s, f"imap-ext-K{k}")
        try:
            line = imap_ext.run(args)
            g.runs.setdefault(s.name, []).append(line)
        except (OSError, RuntimeError, imap_ext.imaplib.IMAP4.error) as e:
            line = {"workload": "imap-ext", "label": s.name, "ok": False,
                    "error": f"{type(e).__name__}: {e}"}
            g.errors.setdefault(s.name, []).append(line["error"])
        finally:
            self._unspy(spy)
        with open(self.args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        log(f"  {line.get('results') or line['error']}"
            + (f" unsupported: {line['unsupported']}" if line.get("unsupported") else ""))

    def _spy(self, server: Server, name: str):
        if not (self.args.profile and server is self.ours):
            return None
        raw = os.path.join(self.args.profile, f"{name}.txt")
        return raw, subprocess.Popen(
            [self.pyspy, "record", "--pid", str(self.ours.pid), "--rate", "100", "--format", "raw",
             "--output", raw], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _unspy(self, spy) -> None:
        if spy is None:
            return
        raw, proc = spy
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
            self.profiles.append(raw)
        except subprocess.TimeoutExpired:
            proc.kill()

    def idle_conns(self) -> None:
        c = self.args.idle_c or self.size.idle_c
        g = self.group("imap-idle-conns", f"C={c}", {"c": c})

        def one(s: Server, repeat: int | None = None) -> None:
            self.run(g, s, [
                "--port", str(s.ports["imap"]), "--smtp-port", str(s.ports["smtp"]), "-c", str(c),
                "--push-count", "5", "--probe-count", str(self.args.probe_count),
                "--sample-interval", "0",
                "--hold", str(IDLE_HOLD)],
                f"{self.gen(s, 20)} && {s.reset_index}", settle=3, timeout=1800, repeat=repeat)

        # memory per connection: a fresh mailsuite for every repetition, as freed memory stays
        # in a Python process and would make the next run's "before" the last run's "after"
        for _ in range(self.repeats):
            self.ours.start()
            try:
                one(self.ours, repeat=1)
            finally:
                self.ours.stop()
        if self.peer:
            one(self.peer)

    def logins(self) -> None:
        for proto in ("imap", "pop3"):
            for mode in ("seq", "conc"):
                self._logins(proto, mode, self.size.login_seq if mode == "seq" else self.size.login_conc)

    def _logins(self, proto: str, mode: str, n: int) -> None:
        g = self.group("logins", f"{proto} {mode} N={n}", {"proto": proto, "mode": mode})
        extra = ["-c", "10"] if mode == "conc" else []
        self.each_server(lambda s: self.run(g, s, [
            "--proto", proto, "--port", str(s.ports[proto]), "--mode", mode, "-n", str(n), *extra],
            f"{self.gen(s, 20)} && {s.reset_index}"))

    def slow_crowd(self) -> None:
        """IMAP logins while CROWD slow clients hold connections; mailsuite only (Postfix's
        per-read smtpd_timeout would hold the SMTP part of the crowd for ever)."""
        g = self.group("slow-crowd", f"C={CROWD}", {"c": CROWD})
        s = self.ours
        sh(f"{self.gen(s, 20, '--user bench1')} && {s.reset_index}")
        script = os.path.join(s.checkout, "tests", "integration", "slow_client.py")
        sources = ",".join(f"127.0.0.{i}" for i in range(2, 42))
        crowd = [self.python, script, "127.0.0.1", str(s.ports["smtp"]), str(s.ports["imap"]),
                 str(s.ports["pop3"]), "--count", str(CROWD), "--interval", str(CROWD_INTERVAL),
                 "--sources", sources, "--max-seconds", "420"]
        s.start()
        try:
            r = probe.logins_under_crowd(s.ports, "bench1", PASSWORD, crowd, CROWD_DEADLINES)
            line = {"workload": "slow-crowd", "label": s.name, "ok": True,
                    "variant": g.variant, "results": r}
            g.runs[s.name] = [line]
        except (OSError, RuntimeError, ValueError) as e:
            line = {"workload": "slow-crowd", "label": s.name, "ok": False,
                    "error": f"{type(e).__name__}: {e}"}
            g.errors[s.name] = [line["error"]]
        finally:
            s.stop()
        with open(self.args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        log(f"slow-crowd -> {s.name}: {line.get('results') or line['error']}")

    def leave_small_mailboxes(self) -> None:
        """Do not leave 1.3 GB mboxes behind (as run_suite.sh): 20 messages per user."""
        for s in self.servers():
            subprocess.run(self.gen(s, 20), shell=True, check=False)
        if not self.args.keep_cache:
            shutil.rmtree(os.path.join(self.args.workdir, "cache"), ignore_errors=True)


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, 1 repetition (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the issues' sizes, 3 repetitions, noise guard")
    p.set_defaults(mode="quick")
    p.add_argument("--only", action="append", choices=WORKLOADS, metavar="WORKLOAD",
                   help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}")
    p.add_argument("--no-peers", action="store_true", help="measure mailsuite only")
    p.add_argument("--install-peers", action="store_true",
                   help="run setup_peers.sh install first (apt-get install postfix dovecot)")
    p.add_argument("--out", help="JSON lines of every run (default WORKDIR/results-DATE.jsonl)")
    p.add_argument("--workdir", default="/var/tmp/mailsuite-bench",
                   help="mailsuite's mail.ini, spool, folders, maillog, mailbox cache")
    p.add_argument("--python", help="Python with Twisted for mailsuite (default: this one, "
                   "else /opt/mailsuite/bin/python, else /opt/msdev/bin/python)")
    p.add_argument("--checkout", default=CHECKOUT,
                   help="the mailsuite source tree (default: the one holding bench/)")
    p.add_argument("--worktree", action="store_true",
                   help="run the checkout's files as they are; default: a snapshot of its HEAD "
                   "(git archive into WORKDIR/src), so that commits landing during a long run "
                   "do not mix versions and the figures belong to one commit")
    p.add_argument("--ports", default="2025,2110,2143", help="mailsuite's SMTP,POP3,IMAP ports")
    p.add_argument("--mail-owner", default=None,
                   help="[mail] mail_owner: the user of the privilege-separated network "
                   "process; '' runs one root process (default: the checkout's default)")
    p.add_argument("--repeat", type=int, help="repetitions per workload (quick 1, full 3)")
    p.add_argument("--big-k", type=int, action="append",
                   help="imap-big INBOX size in messages (repeatable; quick 10000, full 10000+100000)")
    p.add_argument("--pop3-n", type=int, help="pop3-retr messages per user (quick 200, full 1000)")
    p.add_argument("--smtp-m", type=int, help="smtp-deliver messages (quick 1000, full 3000)")
    p.add_argument("--smtp-c", type=int, default=10, help="smtp-deliver connections (10)")
    p.add_argument("--rspamd-port", type=int, default=2332,
                   help="smtp-milter: the port of rspamd's milter (2332)")
    p.add_argument("--dns-port", type=int, default=2053,
                   help="smtp-authcheck: the port of its DNS server (2053)")
    p.add_argument("--idle-c", type=int, help="imap-idle-conns connections (quick 500, full 2000)")
    p.add_argument("--probe-count", type=int, default=20,
                   help="imap-idle-conns: LOGIN+SELECT probes before and while the sessions are"
                        " open (default 20; more for a steadier p50)")
    p.add_argument("--noise", help="mailbench noise options instead of the mode's, e.g. "
                   "'--wait-quiet 25 --wait-quiet-max 60 --max-other-pct 25 --noise-retries 2'")
    p.add_argument("--profile", metavar="DIR", help="record mailsuite with py-spy during each "
                   "workload (DIR/*.txt, collapsed stacks) and print the hot functions; the "
                   "figures of such a run are slowed by the sampling")
    p.add_argument("--keep-cache", action="store_true", help="keep the generated big mailboxes")
    args = p.parse_args(argv)
    args.workdir = os.path.abspath(args.workdir)
    args.checkout = os.path.abspath(args.checkout)
    args.out = os.path.abspath(args.out or os.path.join(
        args.workdir, f"results-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: mailsuite reads /etc/shadow and writes mailboxes for bench1..10")
    if not os.path.exists(os.path.join(MAILBENCH_DIR, "mailbench.py")):
        sys.exit(f"mailbench.py not found in {MAILBENCH_DIR}; set MAILBENCH_DIR")
    python = find_python(args.python)
    setup_peers = os.path.join(MAILBENCH_DIR, "setup_peers.sh")
    # 2,000 IDLE connections: mailsuite, mailbench (and Dovecot) inherit this limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE), max(hard, NOFILE)))
    if args.install_peers and not args.no_peers:
        log("setup_peers.sh install")
        sh(["bash", setup_peers, "install"])
    users = [f"bench{i}" for i in range(1, NUSERS + 1)]
    ensure_users(users)
    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
    commit = checkout_commit(args.checkout)
    if not args.worktree:
        args.checkout = snapshot(args.checkout, args.workdir)
        commit = commit.replace("+dirty", "")
    smtp, pop3, imap = (int(x) for x in args.ports.split(","))
    ours = Mailsuite(args.workdir, python, {"smtp": smtp, "pop3": pop3, "imap": imap},
                     args.checkout, args.mail_owner)
    ours.prepare(users)
    ours.start()  # fail early on a broken config; each workload restarts it
    ours.stop()

    peer: Peers | None = None
    started_peers = False
    if not args.no_peers:
        peer = Peers()
        if not peer.running():
            if Peers.installed():
                log("setup_peers.sh start")
                sh(["bash", setup_peers, "start"])
                started_peers = True
                time.sleep(2)
            else:
                log("Postfix + Dovecot not installed (setup_peers.sh install, or --install-peers):"
                    " their column shows the reference figures of ../shared/bench/README.md")
                peer = None
        if peer and not peer.running():
            sys.exit(f"peers not answering on {sorted(peer.ports.values())}")

    meta = {"bench_meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit,
        "mode": args.mode, "machine": machine(), "python": subprocess.run(
            [python, "-c", "import sys, twisted; print(sys.version.split()[0], twisted.__version__)"],
            check=False, capture_output=True, text=True).stdout.strip(),
        "peers": bool(peer), "profiled": bool(args.profile), "argv": sys.argv[1:]}}
    with open(args.out, "a") as f:
        f.write(json.dumps(meta) + "\n")
    log(f"results -> {args.out}")

    bench = Bench(args, python, ours, peer)
    steps = {"smtp-deliver": bench.smtp_deliver, "pop3-retr": bench.pop3_retr,
             "imap-big": bench.imap_big, "imap-ext": bench.imap_ext,
             "imap-idle-conns": bench.idle_conns,
             "logins": bench.logins, "slow-crowd": bench.slow_crowd,
             "smtp-milter": bench.smtp_milter, "smtp-authcheck": bench.smtp_authcheck}
    try:
        for name in WORKLOADS:
            if not args.only or name in args.only:
                steps[name]()
    finally:
        ours.stop()
        bench.leave_small_mailboxes()
        if started_peers:
            log("setup_peers.sh stop (this run started them)")
            subprocess.run(["bash", setup_peers, "stop"], check=False)

    m = meta["bench_meta"]
    print(f"\nmailsuite {m['commit']} ({args.mode}{', profiled' if args.profile else ''}) "
          f"on {m['machine']['nproc']} x {m['machine']['cpu']}, {m['date']}; "
          f"peer column: {'measured in this run' if peer else 'ref = ../shared/bench/README.md'}\n")
    print(report.format_table(report.rows(bench.groups, OURS, PEER)))
    for line in imap_ext.ratio_lines(bench.groups, OURS, PEER):
        print(line)
    print("\nnoise (mailbench: CPU used by other processes during each run):")
    for line in report.noise_lines(bench.groups):
        print("  " + line)
    for raw in bench.profiles:
        print()
        print(report.profile_summary(raw))
    print(f"\nraw JSON lines: {args.out}")
    failed = any(g.errors for g in bench.groups)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
