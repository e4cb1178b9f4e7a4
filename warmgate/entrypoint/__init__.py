"""The container ENTRYPOINT (`warmgate run`): supervises the model server as PID 1, warms it,
load-tests it and gates readiness."""
