# syntax=docker/dockerfile:1
# Multi-stage: the build stage installs authproxy into a venv; the final stage copies only
# that venv onto the same base, so no compiler, pip cache or source tree ships.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/authproxy
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY authproxy ./authproxy
RUN /opt/authproxy/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && find /opt/authproxy -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/authproxy \
        --create-home --shell /usr/sbin/nologin authproxy
COPY --from=build /opt/authproxy /opt/authproxy
ENV PATH=/opt/authproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AUTHPROXY_LISTEN=0.0.0.0:8080
USER authproxy
WORKDIR /var/lib/authproxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('AUTHPROXY_LISTEN', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/_authproxy/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["authproxy", "serve"]
