"""The figures table: metrics per workload, the issues' targets, the peers' reference figures.

A *group* is one workload at one size (``("imap-big", "K=100000")``); each server's runs of a
group are mailbench JSON lines. Every metric is the median over the runs (``[min-max]`` beside it
when there are several). Targets come from issue 3 (IMAP) and issue 5 (SMTP); where an issue gives
no target the column shows the peer's figure only.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

Run = dict


def path(*keys: str) -> Callable[[Run], float | None]:
    def get(run: Run) -> float | None:
        value: object = run
        for k in keys:
            if not isinstance(value, dict) or value.get(k) is None:
                return None
            value = value[k]
        return value if isinstance(value, int | float) else None

    return get


def ratio(num: Callable[[Run], float | None], den: Callable[[Run], float | None], scale: float = 1.0):
    def get(run: Run) -> float | None:
        a, b = num(run), den(run)
        return a / b * scale if a is not None and b else None

    return get


@dataclass(frozen=True)
class Metric:
    label: str
    get: Callable[[Run], float | None]
    fmt: str = "{:,.0f}"
    higher_is_better: bool = True
    #: target(group params) -> value; compared with >= (higher_is_better) or <=
    target: Callable[[dict], float | None] | None = None
    #: reference figures of the peer in ../shared/bench/README.md, per variant (used with --no-peers)
    refs: dict[str, float] | None = None


def k_of(params: dict) -> int:
    return int(params.get("k", 100000))


def scaled(figure_at_100k: float) -> Callable[[dict], float]:
    """A Dovecot time at K = 100,000 scaled linearly to the mailbox size actually measured."""
    return lambda p: figure_at_100k * k_of(p) / 100000


def const(value: float) -> Callable[[dict], float]:
    return lambda p: value


SERVER_CPU = path("server", "cpu_s")

METRICS: dict[str, list[Metric]] = {
    "smtp-deliver": [
        Metric("end-to-end msgs/s", path("results", "e2e_msgs_per_s"), target=const(2 * 643),
               refs={"C=10": 643}),
        Metric("SMTP accepted msgs/s", path("results", "smtp_msgs_per_s"), refs={"C=10": 871}),
        Metric("SMTP txn p99 ms", path("results", "smtp_latency", "p99_ms"), "{:,.1f}", False,
               refs={"C=10": 22}),
        Metric("ack->visible p99 ms", path("results", "ack_to_visible", "p99_ms"), "{:,.1f}", False,
               refs={"C=10": 157}),
        Metric("server CPU ms/msg", ratio(SERVER_CPU, path("results", "messages"), 1000), "{:.2f}",
               False, refs={"C=10": 1.77}),
    ],
    "pop3-retr": [
        Metric("RETR msgs/s", path("results", "msgs_per_s"), refs={"RETR": 4886, "DELE": 4574}),
        Metric("MB/s", path("results", "MB_per_s"), "{:,.1f}", refs={"RETR": 63.6, "DELE": 59.5}),
        Metric("login p50 ms", path("results", "login", "p50_ms"), "{:,.1f}", False,
               refs={"RETR": 267, "DELE": 273}),
        Metric("QUIT p50 ms", path("results", "quit", "p50_ms"), "{:,.1f}", False,
               refs={"RETR": 52, "DELE": 47}),
        Metric("LIST/RETR size mismatches", path("results", "size_mismatch"), "{:.0f}", False,
               target=const(0)),
        Metric("server CPU s", SERVER_CPU, "{:.2f}", False, refs={"RETR": 3.2, "DELE": 3.4}),
    ],
    "imap-big": [
        Metric("SELECT cold s", path("results", "select_cold_s"), "{:,.3f}", False,
               target=scaled(7.8), refs={"K=10000": 0.78, "K=100000": 7.80}),
        Metric("SELECT warm ms", ratio(path("results", "select_warm_s"), const(1), 1000),
               "{:,.1f}", False, target=const(2), refs={"K=10000": 2, "K=100000": 1}),
        Metric("hdr FETCH 1:* rec/s", path("results", "fetch_headers_per_s"), target=const(12700),
               refs={"K=10000": 12200, "K=100000": 12700}),
        Metric("hdr FETCH again s", path("results", "fetch_headers_again_s"), "{:,.3f}", False,
               refs={"K=10000": 0.061, "K=100000": 0.60}),
        Metric("UID SEARCH SINCE s", path("results", "search_since_s"), "{:,.3f}", False,
               refs={"K=10000": 0.022, "K=100000": 0.215}),
        Metric("STORE 1000 \\Seen s", path("results", "store_seen_s"), "{:,.3f}", False,
               refs={"K=10000": 0.019, "K=100000": 0.010}),
        Metric("BODY.PEEK[] p50 ms", path("results", "fetch_body", "p50_ms"), "{:,.2f}", False,
               target=const(0.2), refs={"K=10000": 0.24, "K=100000": 0.22}),
        Metric("BODY.PEEK[] p99 ms", path("results", "fetch_body", "p99_ms"), "{:,.2f}", False,
               refs={"K=10000": 0.40, "K=100000": 0.67}),
        Metric("EXPUNGE 10 s", path("results", "expunge_s"), "{:,.3f}", False,
               target=scaled(3.2), refs={"K=10000": 0.31, "K=100000": 3.19}),
        Metric("LOGOUT after s", path("results", "logout2_s"), "{:,.3f}", False,
               refs={"K=10000": 0.21, "K=100000": 1.98}),
        Metric("server CPU s", SERVER_CPU, "{:,.1f}", False, refs={"K=10000": 2.4, "K=100000": 21.8}),
        Metric("server RSS peak MB", ratio(path("server", "rss_kb_peak"), const(1), 1 / 1024),
               "{:,.0f}", False, refs={"K=10000": 108, "K=100000": 100}),
    ],
    "imap-noop-probe": [
        Metric("SELECT cold (probe) s", path("results", "select_cold_s"), "{:,.3f}", False),
        Metric("NOOP during it p50 ms", path("results", "noop_p50_ms"), "{:,.1f}", False),
        Metric("NOOP during it max ms", path("results", "noop_max_ms"), "{:,.1f}", False,
               target=const(100)),
    ],
    "imap-idle-conns": [
        Metric("PSS KB per IDLE conn", path("results", "pss_kb_per_conn"), "{:,.1f}", False,
               target=const(60), refs={"C=2000": 566.6}),
        Metric("RSS KB per IDLE conn", path("results", "rss_kb_per_conn"), "{:,.1f}", False,
               refs={"C=2000": 5892}),
        Metric("opening rate /s", path("results", "open_per_s"), "{:,.1f}", target=const(100),
               refs={"C=2000": 36.9}),
        Metric("LOGIN+SELECT while open p50 ms", path("results", "probe_during", "p50_ms"),
               "{:,.1f}", False, target=const(50), refs={"C=2000": 50}),
        Metric("idle CPU %", path("results", "idle_cpu_pct"), "{:,.1f}", False, refs={"C=2000": 0}),
        Metric("push first p50 ms", path("results", "push_first", "p50_ms"), "{:,.0f}", False,
               refs={"C=2000": 503}),
        Metric("push all sessions p50 ms", path("results", "push_all", "p50_ms"), "{:,.0f}", False,
               target=const(500), refs={"C=2000": 865}),
        Metric("push all sessions max ms", path("results", "push_all", "max_ms"), "{:,.0f}", False,
               target=const(500)),
    ],
    "slow-crowd": [
        Metric("login p50 ms, no crowd", path("results", "login_before", "p50_ms"), "{:,.1f}",
               False),
        Metric("login p50 ms, crowd held", path("results", "login_during", "p50_ms"), "{:,.1f}",
               False, target=const(100)),
        Metric("login p95 ms, crowd held", path("results", "login_during", "p95_ms"), "{:,.1f}",
               False),
        Metric("crowd connections held", path("results", "held_while_logging_in_min"), "{:,.0f}"),
        Metric("crowd closed late or never", path("results", "late_or_never"), "{:,.0f}", False,
               target=const(0)),
        Metric("IMAP crowd held max s", path("results", "held_s", "imap", "max"), "{:,.1f}",
               False, target=const(62)),
        Metric("SMTP DATA crowd held max s", path("results", "held_s", "smtp-data", "max"),
               "{:,.1f}", False, target=const(302)),
    ],
    "logins": [
        Metric("logins/s", path("results", "logins_per_s"), "{:,.1f}",
               target=lambda p: 100 if p.get("mode") == "conc" else None,
               refs={"imap seq": 19.6, "imap conc": 36.0, "pop3 seq": 17.9, "pop3 conc": 36.4}),
        Metric("login p50 ms", path("results", "login", "p50_ms"), "{:,.1f}", False,
               refs={"imap seq": 49, "imap conc": 275, "pop3 seq": 54, "pop3 conc": 273}),
        Metric("server CPU ms/login", ratio(SERVER_CPU, path("results", "logins"), 1000),
               "{:,.1f}", False,
               refs={"imap seq": 51, "imap conc": 51, "pop3 seq": 56, "pop3 conc": 56}),
    ],
}


def median_of(runs: list[Run], get: Callable[[Run], float | None]) -> tuple[float, float, float] | None:
    values = [v for v in map(get, runs) if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def cell(stats: tuple[float, float, float] | None, fmt: str) -> str:
    if stats is None:
        return "-"
    med, lo, hi = stats
    text = fmt.format(med)
    if hi != lo:
        text += f" [{fmt.format(lo)}-{fmt.format(hi)}]"
    return text


def ref_key(workload: str, params: dict) -> str:
    if workload == "imap-big":
        return f"K={params.get('k')}"
    if workload == "smtp-deliver":
        return f"C={params.get('c')}"
    if workload == "pop3-retr":
        return "DELE" if params.get("dele") else "RETR"
    if workload == "imap-idle-conns":
        return f"C={params.get('c')}"
    if workload == "logins":
        return f"{params.get('proto')} {params.get('mode')}"
    return ""


@dataclass
class Group:
    workload: str
    variant: str
    params: dict
    runs: dict  # server name -> list of runs
    errors: dict  # server name -> list of error strings


def rows(groups: list[Group], ours: str, peer: str) -> list[list[str]]:
    out = [["workload", "metric", ours, peer, "target", ""]]
    for g in groups:
        for m in METRICS.get(g.workload, []):
            mine = median_of(g.runs.get(ours, []), m.get)
            theirs_runs = g.runs.get(peer, [])
            if theirs_runs:
                theirs = cell(median_of(theirs_runs, m.get), m.fmt)
            elif m.refs and ref_key(g.workload, g.params) in m.refs:
                theirs = "ref " + m.fmt.format(m.refs[ref_key(g.workload, g.params)])
            else:
                theirs = "-"
            target = m.target(g.params) if m.target else None
            verdict = ""
            if target is not None:
                op = ">=" if m.higher_is_better else "<="
                tcell = f"{op} {m.fmt.format(target)}"
                if mine is not None:
                    ok = mine[0] >= target if m.higher_is_better else mine[0] <= target
                    verdict = "ok" if ok else "MISS"
            else:
                tcell = ""
            if g.errors.get(ours) and mine is None:
                verdict = "FAILED"
            out.append([f"{g.workload} {g.variant}", m.label, cell(mine, m.fmt), theirs, tcell, verdict])
    return out


def format_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, r in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def noise_lines(groups: list[Group]) -> list[str]:
    """Per group and server: how busy the rest of the machine and the client were."""
    out = []
    for g in groups:
        for server, runs in g.runs.items():
            other = [r.get("noise", {}).get("other_cpu_pct") for r in runs]
            client = [r.get("client", {}).get("cpu_util_pct") for r in runs]
            other = [x for x in other if x is not None]
            client = [x for x in client if x is not None]
            noisy = sum(1 for r in runs if r.get("noisy"))
            out.append(
                f"{g.workload} {g.variant} [{server}]: {len(runs)} run(s); other processes "
                f"max {max(other):.0f}% of the machine" if other else
                f"{g.workload} {g.variant} [{server}]: {len(runs)} run(s)")
            if client:
                out[-1] += f"; client CPU max {max(client):.0f}% of a core"
            if noisy:
                out[-1] += f"; {noisy} run(s) flagged noisy"
        for server, errors in g.errors.items():
            for e in errors:
                out.append(f"{g.workload} {g.variant} [{server}]: FAILED: {e}")
    return out


# -- py-spy profiles ------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


#: leaves where a thread waits (py-spy still samples some of them as active)
IDLE_LEAVES = ("Condition.wait (", "EPollReactor.doPoll (", "_worker (", "Event.wait (")


def profile_summary(raw_path: str, top: int = 15) -> str:
    """Hot functions from ``py-spy record --format raw``: samples where a thread was busy.

    Three views: the leaf function (own time), the innermost mailsuite function on the stack (where
    in our code the time is spent, stdlib and Twisted callees included), and inclusive time of
    mailsuite functions. The reactor thread (stack rooted in twistd's ``<module>``) and the thread
    pool are counted apart: reactor time delays every other session.
    """
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    with open(raw_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short(x) for x in stack.split(";")]
            if frames[-1].startswith(IDLE_LEAVES):
                idle += n
                continue
            total += n
            threads["reactor" if frames[0].startswith("<module>") else "thread pool"] += n
            own[frames[-1]] += n
            mine = [fr for fr in frames if "mailsuite/" in fr]
            ours[mine[-1] if mine else "(not in mailsuite code) " + frames[-1]] += n
            for fr in set(mine):
                incl[fr] += n
    if not total:
        return f"{raw_path}: no busy samples"
    split = ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in threads.most_common())
    head = (f"{raw_path}: {total} busy samples at 100 Hz = {total / 100:.1f} s of CPU "
            f"({split}; {idle} waiting samples left out)")
    lines = [head, "  own time (leaf function):"]
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in own.most_common(top)]
    lines.append("  innermost mailsuite function (callees included):")
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in ours.most_common(top)]
    lines.append("  inclusive (mailsuite functions):")
    lines += [f"    {100 * n / total:5.1f}%  {fr}" for fr, n in incl.most_common(top)]
    return "\n".join(lines)
