"""Real models from optional packages, converted locally for the server (no downloads)."""
