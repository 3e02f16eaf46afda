# iotdr's replicator as a container image (ECS Fargate: deploy/cloudformation/replicator-ecs.yaml;
# Kubernetes: deploy/k8s/replicator.yaml). Build from the repository's root:
#
#   docker build -f deploy/replicator.Dockerfile -t iotdr-replicator:0.1.0 .
#
# Configuration comes from the environment (IOTDR_PRIMARY_REGION, IOTDR_SECONDARY_REGION,
# IOTDR_REPLICATOR_FEED, ...: see `iotdr replicator run --help`); the journal is in
# /var/lib/iotdr, a volume. /healthz, /readyz and /metrics listen on port 9464.

# The base is pinned to a patch release; pin it by digest too in your registry.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY device_agent ./device_agent
COPY replicator ./replicator
# Wheels of iotdr and of the replicator extra's dependencies, nothing else (no simulators).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[replicator]"

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IOTDR_REPLICATOR_LISTEN=0.0.0.0:9464 \
    IOTDR_REPLICATOR_JOURNAL=/var/lib/iotdr/journal.db
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/iotdr --shell /usr/sbin/nologin iotdr \
    && mkdir -p /var/lib/iotdr \
    && chown 10001:10001 /var/lib/iotdr
USER 10001:10001
WORKDIR /var/lib/iotdr
VOLUME ["/var/lib/iotdr"]
EXPOSE 9464
# Liveness as the service reports it: 200 from /healthz on the --listen port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('IOTDR_REPLICATOR_LISTEN', ':9464').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["iotdr", "--log-json"]
CMD ["replicator", "run"]
