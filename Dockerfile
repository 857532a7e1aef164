# The journeymap image: the CLI and the Faust worker (`journeymap worker`), for docker-compose.yml.
# Kafka, Redis and ClickHouse run in their own official images; settings come from JOURNEYMAP_*.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Every dependency ships wheels (confluent-kafka, rocksdict, chdb-core, orjson): no compiler.
# README.md* is optional: a wildcard may match nothing while pyproject.toml matches.
COPY pyproject.toml README.md* ./
COPY processors ./processors
COPY online_models ./online_models
COPY sinks ./sinks
COPY streams ./streams
COPY simulator ./simulator
RUN pip install .

COPY journeymap.toml ./
RUN useradd --create-home --uid 10001 journeymap && mkdir -p /data && chown journeymap /data
USER journeymap
# Faust table state (RocksDB) and the embedded store, when used, live on the /data volume.
WORKDIR /data
ENV JOURNEYMAP_CONFIG=/app/journeymap.toml

EXPOSE 6066
ENTRYPOINT ["journeymap"]
CMD ["worker"]
