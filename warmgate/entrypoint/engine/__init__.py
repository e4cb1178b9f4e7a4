"""The engine: proves a healthy server is fast before the ready marker appears.

One attempt runs as stages with small hand-offs (prover.py runs them and assembles the report):

  plan.py      shapes (configured or from metadata) and every request body, built once
  warm.py      warm waves per shape, smallest first; golden answers for the concurrency check
  loadtest.py  the load schedule and closed/open loop (loadgen.py), measured into a report
  postwarm.py  one request per shape after the load test
  gate.py      the one judge: every GateCheck and the verdict

Shared by the stages: context.py (config, client, progress), evidence.py (what stages hand on),
connections.py (the client's pool size), payloads.py, consistency.py, memory.py, stats.py.
run.py builds `prover.ProofSetup` and imports prover.py after the server is spawned; this package
imports nothing, so `import warmgate.entrypoint.engine.connections` stays light.
"""
