"""Filter daemons a test starts itself (a libmilter test milter, rspamd, clamd,
clamav-milter): each in its own process group, its output to a file, ready when its socket
accepts (bounded in time), stopped by its pid (SIGTERM, then SIGKILL to its group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from tests.integration.harness import wait_group


class Daemon:
    def __init__(self, testcase, name: str, argv: list[str], log: str,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log, env
        self.process: subprocess.Popen[bytes] | None = None
        testcase.addCleanup(self.stop)

    def start(self, port: int | None = None, path: str | None = None,
              timeout: float = 30.0) -> None:
        """Run it and wait until 127.0.0.1:``port`` or the unix socket ``path`` accepts."""
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}:\n"
                                     f"{self.log()}")
            if self._accepts(port, path):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start in {timeout:.0f}s:\n{self.log()}")

    @staticmethod
    def _accepts(port: int | None, path: str | None) -> bool:
        family = socket.AF_UNIX if path else socket.AF_INET
        with socket.socket(family) as s:
            s.settimeout(1)
            try:
                s.connect(path if path else ("127.0.0.1", port))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # what it forked (rspamd's workers)
        wait_group(process.pid)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""
