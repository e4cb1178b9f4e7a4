"""`warmgate sidecar`: the whole job from beside a server container it does not own.

It composes the two programs that never import each other: the engine (part `entrypoint`) warms
and gates the server over localhost, and the probe (part `probe`) serves the kubelet's probes and
/metrics from the state files the engine's cycles write. There is no server process to spawn or
supervise; the server's own readiness says when it is there, lost or back.
"""
