# exact-gateway container image.
#
# Two stages: "build" installs the package into a virtual environment at /opt/venv; the final
# stage copies only that venv onto the same slim Python base, so no compiler, pip cache or
# source tree reaches the image. It runs as a numeric non-root user and writes nothing at run
# time, so it works with readOnlyRootFilesystem. tests/helm/test_image.py repeats the build
# stage's COPY and RUN steps in a fresh venv (there is no Docker engine on the dev machines).
#
#   docker build -t exact-gateway:0.1.0 .
#   docker run --rm -p 8480:8480 -p 8481:8481 -e EXACT_GATEWAY_HOST=0.0.0.0 \
#     exact-gateway:0.1.0 serve --environment sandbox

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# With the "otel" extra, so the chart's tracing.enabled works; the SDK is only imported when
# OTEL_* variables turn tracing on.
RUN /opt/venv/bin/pip install --no-cache-dir ".[otel]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="exact-gateway" \
      org.opencontainers.image.description="Resilient reverse-proxy sidecar for the EXACT dental practice API" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
WORKDIR /
USER 10001:10001
EXPOSE 8480 8481
ENTRYPOINT ["exact-gateway"]
CMD ["serve"]
