"""Worker readiness shared across forked processes: one byte per worker in anonymous shared memory.

Made by the supervisor before fork; each worker sets its own byte when warm, and /v2/health/ready
answers 200 only when every byte is set, so the pod is never Ready while one worker is still cold.
"""

from __future__ import annotations

import mmap


class ReadySlots:
    def __init__(self, count: int) -> None:
        self._count = count
        # MAP_SHARED | MAP_ANONYMOUS: the same pages in parent and children after fork.
        self._memory = mmap.mmap(-1, count)

    def __len__(self) -> int:
        return self._count

    def set(self, index: int, ready: bool) -> None:
        self._memory[index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return all(self._memory[i] == 1 for i in range(self._count))

    def close(self) -> None:
        self._memory.close()
