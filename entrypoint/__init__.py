"""warmgate entrypoint: supervises the model server as PID 1, warms it, gates readiness."""

__version__ = "0.1.0"
