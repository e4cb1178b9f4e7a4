"""warmgate probe sidecar: kubelet probes and Prometheus metrics from the entrypoint's state."""
