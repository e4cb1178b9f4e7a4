"""warmgate: keep model-server pods out of traffic until they are warm and proven fast.

One import name for everything the project installs. The shared contract sits at this level
(config, state files, protocols, tensors, exit codes); the parts sit beneath it and never import
each other: entrypoint/ (`warmgate run`), probe/ (the sidecar), modelserver/ (`warmgate serve`).
See docs/architecture.md.
"""

__version__ = "0.1.0"
