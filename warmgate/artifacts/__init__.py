"""Warm artifacts that outlive a pod: a keyed, bounded, concurrency-safe cache directory (store.py)
and the environment that points a model server's own compile caches into it (environment.py).

A leaf beside `files`: standard library only, importable by the entrypoint, the model server and
the sidecar. Nothing is imported here so that `warmgate.artifacts.environment` stays cheap to load
on the spawn path.
"""
