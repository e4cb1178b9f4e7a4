"""`warmgate run --once` over a real fault server process (tests/support/faultserver.py), and the
checks every fault test makes afterwards: which process served, and that it is gone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.support.faultserver import fault_server_command
from tests.support.procs import WARMGATE, Proc, free_port, warmgate_env


def run_against(tmp_path: Path, behaviour: str, *options: str, **sections: Any) -> tuple[Proc, Path]:
    port = free_port()
    state_dir = tmp_path / "state"
    config: dict[str, Any] = {
        "server": {
            "url": f"http://127.0.0.1:{port}",
            "protocol": "oip",
            "model": "demo",
            "start_timeout_s": 30,
            "request_timeout_s": 5,
        },
        "shapes": [{"name": "bs4", "batch_size": 4, "inputs": {"input": {"dims": [4]}}, "count": 2}],
        "load_test": {"enabled": False},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0.1, "grace_period_s": 5},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [
        *WARMGATE,
        "run",
        "--once",
        "-c",
        str(path),
        "--",
        *fault_server_command(behaviour, port, *options),
    ]
    return Proc(argv, env=warmgate_env()), state_dir


def server_pid(proc: Proc) -> int:
    match = re.search(r"^faultserver \S+ listening on \S+ pid (\d+)$", proc.output, re.M)
    assert match, proc.output
    return int(match.group(1))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
