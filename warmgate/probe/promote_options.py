"""What `warmgate promote` is asked to do (PromoteOptions), the chart's names it relies on, and
how it fails (PromoteError and the exit codes). Shared by the steps (promote, promote_pods) and
the CLI (promote_cli), so none of them imports another's internals."""

from __future__ import annotations

from dataclasses import dataclass

COLOR_LABEL = "warmgate.dev/color"
WARM_CONDITION = "warmgate.dev/warm"
REPLICAS_ANNOTATION = "warmgate.dev/replicas-before-scale-down"
DEFAULT_PROBE_PORT = 8086

# Exit codes of `warmgate promote` (2, a usage error, comes from the CLI).
EXIT_PROMOTED = 0
EXIT_NOT_PROMOTED = 1
# Traffic is on the target color, but scaling the old one down failed.
EXIT_SCALE_DOWN_FAILED = 3
# The stable Service was switched, the preview could not be, and the revert failed too.
EXIT_HALF_SWITCHED = 4


class PromoteError(Exception):
    """Promotion refused or failed; exit_code tells whether traffic moved (see EXIT_*)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_NOT_PROMOTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class PromoteOptions:
    namespace: str
    service: str
    target: str
    # None: "<service>-preview" when it exists; "" : no preview Service.
    preview_service: str | None = None
    color_label: str = COLOR_LABEL
    # None: Ready alone is enough (charts without the readiness gate; /readyz already gates Ready).
    condition_type: str | None = WARM_CONDITION
    timeout_s: float = 600.0
    poll_interval_s: float = 2.0
    # Refuse when target p95 > active p95 x (1 + this). None: no comparison.
    max_p95_regression: float | None = None
    metrics_port: int = DEFAULT_PROBE_PORT
    # Scale the old color to 0 this long after the switch. None: leave it running.
    scale_down_after_s: float | None = None
    dry_run: bool = False
