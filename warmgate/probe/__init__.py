"""warmgate probe sidecar: kubelet probes and Prometheus metrics from the entrypoint's state."""

# The hidden subcommand of `warmgate probe`'s serving process (probe/launch.py). Here, in the
# package itself, so that the CLI can dispatch it before importing anything of the probe.
SERVE_COMMAND = "__probe-serve"
