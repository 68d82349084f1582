"""Audit rule benchmark: the cost of ``[audit] rules`` on a 1 MB message, without the network.

    PYTHONPATH=. python bench/audit.py [--size 1048576] [--runs 20] [--rules FILE]

Builds a Chinese business message of about ``--size`` bytes as mail clients send it (a GBK
body in base64 labelled GB2312, an HTML alternative in UTF-8 quoted-printable, a text/plain
attachment in Big5, an attachment with an RFC 2231 GB2312 name), with none of the rules'
words in it (the usual case: every rule reads all the text). Runs the stage's work
(mailsuite.filter.audit.scan: decode + match) ``--runs`` times and prints one JSON line:
the best and median milliseconds, and both per MB, for decoding alone and for the whole
scan with the 10 rules below (or the file's). The issue's target: under 20 ms for 10 rules
on 1 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import quopri
import random
import statistics
import time

from mailsuite.filter import mimetext
from mailsuite.filter.audit import scan
from mailsuite.filter.auditrules import parse_rules

RULES = """\
secret      /机密|绝密|秘密/                       HOLD    both
internal    /内部资料|内部文件|请勿外传/           BCC:compliance@example.com outbound
customers   /客户名单|客户资料/                    HOLD    outbound
salary      /工资单|薪资表/                        WARN    both
contract    /合同草案/                             WARN    outbound
confidential /confidential|do not forward/         WARN    both
password    /password\\s*[:=]\\s*\\S+/              REJECT  outbound
idcard      /身份证号[:：]?\\s*\\d{17}[\\dXx]/       HOLD    outbound
bank        /银行账号[:：]?\\s*\\d{12,19}/          HOLD    outbound
codename    /项目代号[:：]\\s*\\w+/                 WARN    both
"""

WORDS = ["我们", "今天", "下午", "开会", "讨论", "季度", "计划", "市场", "预算", "产品", "上线",
         "时间", "安排", "请", "大家", "准时", "参加", "谢谢", "。", "，", "report", "meeting",
         "Q3", "2026", "OK"]


def text(size: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w.encode("gbk")) + 1
    return " ".join(out)


def message(size: int) -> bytes:
    """A multipart/mixed message of about ``size`` bytes (see the module doc)."""
    body = text(size * 45 // 100, 1).encode("gbk")
    html = ("<html><body><p>" + text(size // 10, 2) + "</p></body></html>").encode()
    notes = text(size // 10, 3).replace("。", "\n").encode("big5", "replace")
    name = "".join(f"%{b:02X}" for b in "会议纪要.txt".encode("gb2312"))
    return b"".join([
        b"From: =?gb2312?B?", base64.b64encode("张三".encode("gb2312")),
        b"?= <zhang@example.com>\nTo: li@example.com\nSubject: =?utf-8?B?",
        base64.b64encode("季度计划会议".encode()), b"?=\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=\"=_mix\"\n\n--=_mix\n"
        b"Content-Type: multipart/alternative; boundary=\"=_alt\"\n\n--=_alt\n"
        b"Content-Type: text/plain; charset=\"gb2312\"\nContent-Transfer-Encoding: base64\n\n",
        base64.encodebytes(body), b"--=_alt\nContent-Type: text/html; charset=\"utf-8\"\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n", quopri.encodestring(html),
        b"\n--=_alt--\n--=_mix\nContent-Type: text/plain; charset=big5\n"
        b"Content-Disposition: attachment; filename*=gb2312''", name.encode(),
        b"\nContent-Transfer-Encoding: base64\n\n", base64.encodebytes(notes), b"--=_mix--\n"])


def timed(f, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024 * 1024)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rules", help="a rules file instead of the 10 built-in rules")
    args = ap.parse_args()
    source = open(args.rules, encoding="utf-8").read() if args.rules else RULES
    rules = parse_rules(source, args.rules or "built-in")
    data = message(args.size)
    hits = scan(rules, data)
    decode = timed(lambda: mimetext.extract(data), args.runs)
    whole = timed(lambda: scan(rules, data), args.runs)
    mb = len(data) / (1024 * 1024)
    print(json.dumps({
        "bench": "audit", "rules": len(rules), "bytes": len(data), "hits": len(hits),
        "decoded_chars": sum(len(p.text) for p in mimetext.extract(data)),
        "decode_ms_best": round(min(decode), 2), "decode_ms_median": round(
            statistics.median(decode), 2),
        "scan_ms_best": round(min(whole), 2), "scan_ms_median": round(statistics.median(whole), 2),
        "scan_ms_per_mb_best": round(min(whole) / mb, 2),
        "scan_ms_per_mb_median": round(statistics.median(whole) / mb, 2),
        "target_ms": 20}))


if __name__ == "__main__":
    main()
