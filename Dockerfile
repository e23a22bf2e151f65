# Pictor: the same install as the README (pip install of this repository), in two stages.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY schemas ./schemas
RUN python -m venv /opt/pictor && /opt/pictor/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# an init process as PID 1: it forwards SIGTERM to pictor serve and reaps what exits
# (a killed PostgreSQL postmaster left as a zombie would delay its restart)
RUN apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/pictor /opt/pictor
RUN useradd --system --create-home --home-dir /var/lib/pictor pictor
USER pictor
WORKDIR /var/lib/pictor
# All of the container's addresses: pictor serve refuses that without access control.
# Run with -e PICTOR_AUTH=true (plus PICTOR_DIMSE_PEERS, or PICTOR_DIMSE_PORT=0), or
# accept the risk explicitly with -e PICTOR_INSECURE_NO_AUTH=true (README: access control).
ENV PATH=/opt/pictor/bin:$PATH \
    PICTOR_DATA_DIR=/var/lib/pictor/data \
    PICTOR_HOST=0.0.0.0
VOLUME ["/var/lib/pictor/data"]
EXPOSE 8042 11112
# follows PICTOR_PORT, PICTOR_HOST and TLS (PICTOR_TLS_CERT) as the server does
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
    CMD ["pictor", "health"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["pictor", "serve"]
