"""SMTP client for the inbound authentication checks' integration test, run inside a network
namespace: ``authcheck_client.py HOST PORT HELO JOBS.json`` sends each job (``sender``,
``rcpt``, ``data`` base64, ``auth`` [user, password] or null) in its own session and prints a
JSON list of [code, text] for the end of DATA (or of the step that failed)."""

from __future__ import annotations

import base64
import json
import smtplib
import sys


def send(host: str, port: int, helo: str, job: dict) -> list:
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=60) as s:
        s.ehlo(helo)
        if job.get("auth"):
            s.login(*job["auth"])
        try:
            s.sendmail(job["sender"], [job["rcpt"]], base64.b64decode(job["data"]))
        except smtplib.SMTPDataError as e:
            return [e.smtp_code, e.smtp_error.decode()]
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients[job["rcpt"]]
            return [code, text.decode()]
        return [250, "sent"]


def main() -> None:
    host, port, helo, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with open(path) as f:
        jobs = json.load(f)
    print(json.dumps([send(host, port, helo, job) for job in jobs]))


if __name__ == "__main__":
    main()
