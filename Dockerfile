# syntax=docker/dockerfile:1
# Multi-stage: the build stage installs authproxy into a venv; the final stage copies only
# that venv onto the same base, so no compiler, pip cache or source tree ships.
# Portable between the official python image (python3 in /usr/local/bin) and a Debian
# bookworm with python3-venv (python3 in /usr/bin): only `python3` from PATH is used, and
# the venv's python symlink points at the base's own interpreter, the same in both stages.
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
RUN groupadd --system --gid 10001 authproxy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/authproxy \
        --create-home --shell /usr/sbin/nologin authproxy
COPY --from=build /opt/authproxy /opt/authproxy
ENV PATH=/opt/authproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTHPROXY_LISTEN=0.0.0.0:8080
# Fail the build here, not at the first start, if the copied venv does not fit this base.
RUN authproxy --version && python3 -c "import authproxy.app, authproxy.server.runner"
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/authproxy
EXPOSE 8080
# Over HTTPS when AUTHPROXY_TLS_CERT_FILE is set (mount the certificate and key from a
# secret, see deploy/); the certificate names the service, not 127.0.0.1: not verified here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, ssl, urllib.request; port = os.environ.get('AUTHPROXY_LISTEN', ':8080').rpartition(':')[2]; tls = bool(os.environ.get('AUTHPROXY_TLS_CERT_FILE')); urllib.request.urlopen(f\"{'https' if tls else 'http'}://127.0.0.1:{port}/_authproxy/healthz\", timeout=2, context=ssl._create_unverified_context() if tls else None)"]
STOPSIGNAL SIGTERM
CMD ["authproxy", "serve"]
