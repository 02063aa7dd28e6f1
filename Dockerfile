# amlops controller image: `docker build -t amlops . && docker run amlops run --repo https://… --path manifests`
# Multi-stage: wheels are built in the first stage; the runtime stage has no compiler and runs as a numeric
# non-root user. The scoring extra (TensorFlow) is included so the local backend can serve models inside the
# container; build with --build-arg EXTRAS=azureml for a controller that only drives Azure ML (much smaller).
# The base is pinned to a Python patch release on Debian bookworm, whose package versions the apt pins name;
# bump them together (`apt-cache policy git tini` in the new base says the versions).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=scoring,azureml
WORKDIR /src
# Dependencies first, from pyproject.toml alone (a stub package stands in for the source), so editing the
# source reuses this layer instead of rebuilding every wheel.
COPY pyproject.toml README.md LICENSE ./
RUN mkdir controller && touch controller/__init__.py \
    && pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]" \
    && rm -f /wheels/amlops-*.whl
COPY controller ./controller
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=scoring,azureml
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="amlops" \
      org.opencontainers.image.description="Declarative GitOps controller for Azure Machine Learning GPU inference" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/amlops/amlops" \
      org.opencontainers.image.documentation="https://github.com/amlops/amlops#readme"
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.5-0+deb12u3 tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 amlops \
    && useradd --create-home --uid 10001 --gid 10001 amlops
COPY --from=build /wheels /wheels
# Every wheel, ours included, comes from the build stage: nothing is resolved from an index here.
RUN pip install --no-cache-dir --no-index --find-links /wheels "amlops[${EXTRAS}]==${VERSION}" && rm -rf /wheels
USER 10001:10001
WORKDIR /home/amlops
ENV AMLOPS_STATE_DIR=/home/amlops/state PYTHONUNBUFFERED=1
VOLUME ["/home/amlops/state"]
EXPOSE 8080
# /healthz answers while the process lives, even in the middle of a reconcile (the slim base has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["tini", "--", "amlops"]
CMD ["run", "--repo", "/repo", "--path", "manifests", "--listen", "0.0.0.0:8080"]
