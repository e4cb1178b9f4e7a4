"""A stand-in model server for supervisor tests, driven by its command line.

child.py echo [--group] [--ignore-term] [--health PORT]
    prints "ready", then "<role> got SIG..." for every signal it receives.
    --group also starts a grandchild in the same process group that echoes too;
    --ignore-term ignores SIGTERM (to test the SIGKILL after the grace period);
    --health serves HTTP 200 on every path at 127.0.0.1:PORT.
child.py exit CODE          exits with CODE
child.py kill SIGNAME       kills itself with that signal
child.py inherited          prints "ignored: SIG..." and "blocked: SIG..." (what it inherited),
                            then "ready", and waits with every disposition as inherited
child.py orphan             forks a grandchild whose parent exits at once (an orphan),
                            prints "orphan <pid>", then echoes like `echo`
"""

from __future__ import annotations

import http.server
import os
import signal
import sys
import threading
import time
from pathlib import Path

ECHOED = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGTERM)


def say(text: str) -> None:
    # One write() per line: several processes share the pipe, and writes under PIPE_BUF are atomic.
    os.write(1, f"{text}\n".encode())


def echo_forever(role: str, ignore_term: bool) -> None:
    def handler(signum: int, _frame: object) -> None:
        say(f"{role} got {signal.Signals(signum).name}")
        if signum in (signal.SIGTERM, signal.SIGINT) and not ignore_term:
            sys.exit(0)

    for signum in ECHOED:
        signal.signal(signum, handler)
    say(f"{role} ready")
    while True:
        time.sleep(3600)


def serve_health(port: int) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def report_reaping(pid: int) -> None:
    """Watch the orphan: it exits once orphaned; it disappears only if someone reaps it."""
    deadline = time.monotonic() + 10
    state = "?"
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            say("orphan reaped")
            return
        time.sleep(0.05)
    say(f"orphan not reaped (state {state})")


def main(argv: list[str]) -> None:
    mode, rest = argv[0], argv[1:]
    if mode == "exit":
        sys.exit(int(rest[0]))
    if mode == "kill":
        os.kill(os.getpid(), getattr(signal, rest[0]))
        time.sleep(10)
    if mode == "inherited":
        ignored = [s.name for s in ECHOED if signal.getsignal(s) == signal.SIG_IGN]
        blocked = sorted(signal.Signals(s).name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        say("ignored: " + ",".join(ignored))
        say("blocked: " + ",".join(blocked))
        say("ready")
        while True:
            signal.pause()
    if mode == "orphan":
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            middle_pid = os.getpid()
            orphan = os.fork()
            if orphan == 0:
                # Exit only once orphaned (re-parented away from the middle process), so that it
                # is the new parent, warmgate, that has to reap it.
                deadline = time.monotonic() + 10
                while os.getppid() == middle_pid and time.monotonic() < deadline:
                    time.sleep(0.01)
                os._exit(0)
            os.write(write_end, f"{orphan}\n".encode())
            os._exit(0)
        os.waitpid(middle, 0)
        orphan = int(os.read(read_end, 64).decode())
        say(f"orphan {orphan}")
        threading.Thread(target=report_reaping, args=(orphan,), daemon=True).start()
        echo_forever("server", ignore_term=False)
    if mode == "echo":
        if "--health" in rest:
            serve_health(int(rest[rest.index("--health") + 1]))
        if "--group" in rest and os.fork() == 0:
            echo_forever("grandchild", ignore_term=False)
        echo_forever("server", ignore_term="--ignore-term" in rest)
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
