"""What the API and the workers log and trace, and how: one place for both processes.

- `jobstate.telemetry.logs`: the job a log record is about (job id, tenant, attempt, held
  in context variables that the workers set when a task starts), and the two log
  formats, ``NNKGEO_LOG_FORMAT=text`` (the default) and ``json`` (one JSON object a line).
- `jobstate.telemetry.tracing`: OpenTelemetry traces, off unless ``NNKGEO_OTEL=1``
  (the ``nnkgeo[otel]`` extra): the API's requests (FastAPI) and the Celery messages, the
  trace carried from the request that submits a job to the task that runs it in the
  message's headers. Importing anything else here imports no OpenTelemetry.
- `jobstate.telemetry.setup`: the calls each process makes at start-up,
  `configure_api` and `configure_worker`.

Importing this package imports none of its modules.
"""
