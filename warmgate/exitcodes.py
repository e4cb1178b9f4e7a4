"""warmgate's exit-code contract (documented in README.md; each code has a test).

Besides these, `warmgate run` exits with the server's own code when the server exits, and with
128+N when the server was killed by signal N.
"""

import os

OK = 0
# Bad configuration or command line: the one-line error says what and where.
CONFIG_ERROR = 2
# Exec failures of the server command, as shells and tini/dumb-init report them.
COMMAND_NOT_EXECUTABLE = 126
COMMAND_NOT_FOUND = 127
# Signal deaths are reported as 128 + the signal number.
SIGNAL_BASE = 128
# Our own outcomes: kept away from the small codes servers commonly use.
GATE_FAILED = 80
SERVER_NEVER_HEALTHY = 81
STATE_DIR_UNUSABLE = 82
# warmgate itself failed (an unexpected error, never the server's): it stopped the server's group,
# removed the marker first and wrote `failed` with a one-line reason (fail closed).
WARMGATE_FAILED = 83
# `warmgate bake`: the warm run succeeded but the cache directory holds no artifacts afterwards (a
# server that ignores the exported cache variables).
CACHE_EMPTY = 84


def from_wait_status(status: int) -> int:
    """Translate a waitpid status into a shell-style exit code."""
    if os.WIFSIGNALED(status):
        return SIGNAL_BASE + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)
