"""The job state that the API and the workers share, and nothing of either.

Settings, records and their Redis store (one module per kind of record), the blob store
and its retention, the problem types, the checks that both submission and the worker
apply (shapes, memory budget, data paths, model footprint), `ALGORITHM_VERSION`, and the
task names with the functions that send them (`dispatch`). It imports `api_schemas` and
its libraries (redis, celery, pydantic, numpy; OpenTelemetry in `telemetry.tracing`, only
with NNKGEO_OTEL), never `service` or `workers`; importing this package imports none of
its modules.
"""
