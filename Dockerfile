# Pictor: the same install as the README (pip install of this repository), in two stages.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY schemas ./schemas
RUN python -m venv /opt/pictor && /opt/pictor/bin/pip install --no-cache-dir .

FROM python:3.11-slim
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
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8042/health').status != 200)"
CMD ["pictor", "serve"]
