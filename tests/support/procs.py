"""Real processes for tests: start, read output lines with a deadline, signal, wait."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

CHILD = str(Path(__file__).with_name("child.py"))
WARMGATE = [sys.executable, "-m", "warmgate"]


class Proc:
    """A child process whose merged stdout/stderr is collected line by line."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def expect(self, predicate: str | Callable[[str], bool], timeout: float = 20.0) -> str:
        """Return the first new line matching; fail with everything seen on timeout or EOF."""
        check = predicate if callable(predicate) else (lambda line: predicate in line)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {predicate!r}; output so far:\n{self.output}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise AssertionError(f"process exited before {predicate!r}; output:\n{self.output}")
            self.lines.append(line)
            if check(line):
                return line

    def expect_all(self, texts: set[str], timeout: float = 20.0) -> None:
        """Wait for a line containing each text, in any order (several processes share the pipe)."""
        missing = set(texts)
        while missing:
            wanted = frozenset(missing)
            line = self.expect(lambda line, wanted=wanted: any(text in line for text in wanted), timeout)
            missing = {text for text in missing if text not in line}

    def drain_output(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._queue.put(None)
                return
            self.lines.append(line)

    @property
    def output(self) -> str:
        self.drain_output()
        return "\n".join(self.lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self.drain_output()
        return code

    def close(self) -> None:
        """Stop politely first (warmgate then stops its server's group), then by force."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._reader.join(timeout=5)
        # Closing the pipe while the reader thread still blocks in it would deadlock on the
        # buffer lock; a straggler holding the pipe open keeps it until it exits.
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()


def free_port() -> int:
    """A port that was free a moment ago: for servers whose URL must be known before they start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, state_dir: Path, port: int, **sections: Any) -> Path:
    """A config for a plain HTTP server whose health path is "/"."""
    config: dict[str, Any] = {
        "server": {
            "url": f"http://127.0.0.1:{port}",
            "protocol": "http",
            "health_path": "/",
            "http": {"path": "/"},
            "start_timeout_s": 60,
        },
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0.5, "grace_period_s": 5},
        "load_test": {"enabled": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def warmgate_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMGATE_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def poll_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


SIGNAL_NAMES = {s.name: s for s in signal.Signals}
