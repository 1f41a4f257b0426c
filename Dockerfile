# Switchyard: one image for the API (`switchyard serve`) and for workers (`switchyard worker`).
# See docs/deployment.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SWITCHYARD_DATA_DIR=/data

# An unprivileged user runs the service; root only installs.
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /home/switchyard --create-home \
       --shell /usr/sbin/nologin switchyard \
    && python -m venv "$VIRTUAL_ENV" \
    && mkdir -p /data \
    && chown switchyard:switchyard /data

WORKDIR /app

# README* is a wildcard so the build also works in a checkout without a README
# (pyproject.toml names it, but setuptools only warns when it is missing).
COPY pyproject.toml README* ./
COPY app/ ./app/
COPY handlers/ ./handlers/

# A regular (non-editable) install: the code lands in the venv's site-packages,
# owned by root and read-only for the service user.
RUN pip install . \
    && rm -rf build ./*.egg-info \
    && find /app -name '__pycache__' -prune -exec rm -rf {} +

USER switchyard

EXPOSE 8000

# No curl in the slim image: use Python. /health needs no token; it answers 503 when the
# database is unreachable, which urlopen raises as an error, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["switchyard", "serve", "--host", "0.0.0.0", "--port", "8000"]
