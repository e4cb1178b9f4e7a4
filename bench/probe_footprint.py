"""Where the probe sidecar's idle memory goes: resident memory (VmRSS) after each import, in a
fresh interpreter per chain, for the two processes `warmgate probe` is: the one that validates the
config (pydantic, the protocol adapters, aiohttp) and the lean one it execs to serve
(probe/launch.py).

    .venv/bin/python bench/probe_footprint.py [--json results.json]

Not a timed test; it starts one interpreter per chain and runs no server. The probe's own idle
RSS while serving is measured by bench/probe_bench.py; this script says which imports it is made
of.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHAINS = {
    # `warmgate probe` validates the config with everything the other subcommands use, then execs.
    "before the exec: warmgate probe validating the config": [
        "asyncio",
        "aiohttp",
        "prometheus_client",
        "yaml",
        "pydantic",
        "warmgate.config",
        "warmgate.protocols.registry",
        "warmgate.probe.planning",
    ],
    # What the serving process imports, in the order it does (probe/launch.py).
    "after the exec: the probe's serving process": [
        "asyncio",
        "msgspec",
        "warmgate.probe.launch",
        "httptools",
        "warmgate.probe.server_check",
        "warmgate.state",
        "prometheus_client",
        "warmgate.probe.server",
    ],
}

MEASURE = """
import importlib, json, sys
def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
steps = [["(interpreter)", rss_mib()]]
for name in sys.argv[1:]:
    importlib.import_module(name)
    steps.append([name, rss_mib()])
print(json.dumps(steps))
"""


def measure(chain: list[str]) -> list[tuple[str, float]]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *chain],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    ).stdout
    return [(name, float(rss)) for name, rss in json.loads(out)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = {title: measure(chain) for title, chain in CHAINS.items()}
    print(f"# probe footprint: Python {platform.python_version()}, {platform.machine()}\n")
    for title, steps in results.items():
        print(f"## {title}\n\n| import | RSS after, MiB | added, MiB |\n|---|---:|---:|")
        previous = steps[0][1]
        for name, rss in steps:
            print(f"| {name} | {rss:.1f} | {rss - previous:+.1f} |")
            previous = rss
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
