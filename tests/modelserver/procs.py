"""`warmgate serve` as a real child process: wait for its ready line with a deadline, signal it."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.procs import Proc

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"ready: (http://\S+)(?: grpc://(\S+))?")
# Generous: first imports of onnxruntime/torch on a busy 2-core machine take seconds.
START_TIMEOUT_S = 60.0


class ServerProcess(Proc):
    """`python -m warmgate serve ARGS` with stdout and stderr merged and collected line by line."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        super().__init__(
            [sys.executable, "-m", "warmgate", "serve", *args], env=env or os.environ.copy(), cwd=REPO
        )
        self.url = ""
        # host:port of the gRPC service (a grpc channel's target), when the server announced one.
        self.grpc_target = ""

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        line = self.expect(lambda text: pattern.search(text) is not None, timeout)
        match = pattern.search(line)
        assert match is not None
        return match

    def wait_ready(self) -> str:
        match = self.wait_for(READY)
        self.url, self.grpc_target = match.group(1), match.group(2) or ""
        return self.url
