# nnkgeo: one image for the API (uvicorn) and the workers (celery); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CPU build of torch first, from its own index: from PyPI the same pin would bring
# several GB of CUDA libraries. A GPU image passes another index (see docker-compose.yml).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"

# libgomp1: numba's OpenMP threading layer (below) links the system's GNU OpenMP; the
# slim image lacks it (faiss and torch bring their own copies, numba does not).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin nnkgeo \
    && mkdir -p /data \
    && chown nnkgeo:nnkgeo /data

# The compiled NNK solve (numba, workers/geometry/nnk_compiled.py) caches its machine
# code here: site-packages is read-only to the runtime user, and compiling on first use
# takes 10-40 s of a job. OpenMP, not numba's default search, so that every worker runs
# the same threading layer (tbb is not installed; workqueue is not thread-safe).
ENV NUMBA_CACHE_DIR=/var/cache/numba \
    NUMBA_THREADING_LAYER=omp

WORKDIR /app
COPY pyproject.toml README.md ./
# Every package that pyproject.toml's [tool.setuptools.packages.find] includes.
COPY api_schemas ./api_schemas
COPY jobstate ./jobstate
COPY arrayfiles ./arrayfiles
COPY htmlreport ./htmlreport
COPY service ./service
COPY workers ./workers
COPY modelcheck ./modelcheck
COPY nnkgeo ./nnkgeo
# [server]: the API and the workers, with the engine (the torch above satisfies its pin).
RUN pip install '.[server]'
# Warm the numba cache at build, from /app as the services import the engine (the cache
# is keyed by the source file's path), then hand it to the runtime user. The cache is
# for this build host's CPU: on another CPU family numba compiles once more, on first
# use, into the same (writable) directory.
RUN python -m workers.geometry.nnk_kernel \
    && chown -R nnkgeo:nnkgeo "${NUMBA_CACHE_DIR}"

USER nnkgeo
ENV NNKGEO_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["uvicorn", "service.main:app", "--http", "service.http_protocol:BoundedHttpToolsProtocol", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
