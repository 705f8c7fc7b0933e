# selftune ingest: one image for the api (default CMD), the workers and migrations.
#   api:     (default)  uvicorn api.app:create_app --factory ... (the Procfile's web process)
#   workers: selftune-ingest worker -n 2
#   migrate: selftune-ingest migrate
# Every dependency ships a manylinux wheel, so no compiler or headers are installed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 selftune \
    && useradd --system --uid 10001 --gid selftune --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin selftune

WORKDIR /app

# Dependencies first, exactly as locked (versions and hashes: a rebuild installs the same files),
# so a code change does not reinstall them. `make lock` writes requirements.lock from pyproject.toml.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then the project itself, without dependencies (console script selftune-ingest, SQL migrations
# as package data); pip check fails the build if pyproject.toml and the lock disagree.
COPY pyproject.toml ./
COPY api ./api
COPY schema ./schema
COPY spool ./spool
COPY workers ./workers
COPY ops ./ops
COPY queueing ./queueing
COPY runtime ./runtime
COPY store ./store
RUN pip install --no-deps . \
    && pip check \
    && rm -rf build ./*.egg-info

# The api's local spool (README, "Durability"): mount a volume here; the directory is the
# app user's, so a fresh named volume is too.
ENV SPOOL_PATH=/var/lib/selftune-ingest/spool/api-spool.sqlite3
RUN mkdir -p /var/lib/selftune-ingest/spool && chown -R 10001:10001 /var/lib/selftune-ingest

USER 10001:10001

EXPOSE 8000

# uvicorn's own lines are JSON like the app's (api/uvicorn-logging.json, LOG_FORMAT).
# Idle keep-alive connections close after 5 s and at most 1000 are served at once, so slow or
# idle clients cannot hold the server; bodies slower than BODY_READ_TIMEOUT_S get 408.
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--log-config", "api/uvicorn-logging.json", "--timeout-keep-alive", "5", "--timeout-graceful-shutdown", "30"]
