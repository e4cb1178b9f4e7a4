from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import WARMGATE, Proc, free_port, warmgate_env, write_config


@pytest.fixture
def start_warmgate(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start `warmgate run` over a server command; the config points at a free loopback port."""
    started: list[Proc] = []

    def start(
        server_command: Sequence[str],
        *,
        port: int | None = None,
        once: bool = False,
        wrapper: Sequence[str] = (),
        **sections: Any,
    ) -> Proc:
        port = port or free_port()
        config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", port, **sections)
        argv = [
            *wrapper,
            *WARMGATE,
            "run",
            "-c",
            str(config),
            *(["--once"] if once else []),
            "--",
            *server_command,
        ]
        proc = Proc(argv, env=warmgate_env())
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
