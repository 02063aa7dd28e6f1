# amlops controller image: `docker build -t amlops . && docker run amlops run --repo https://… --path manifests`
# Multi-stage: wheels are built in the first stage; the runtime stage has no compiler and runs as non-root.
# The scoring extra (TensorFlow) is included so the local backend can serve models inside the container;
# build with --build-arg EXTRAS=azureml for a controller that only drives Azure ML (much smaller).
ARG PYTHON_VERSION=3.11
ARG EXTRAS=scoring,azureml

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG EXTRAS
RUN apt-get update && apt-get install -y --no-install-recommends git tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 amlops
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "amlops[${EXTRAS}]" && rm -rf /wheels
USER amlops
WORKDIR /home/amlops
ENV AMLOPS_STATE_DIR=/home/amlops/state PYTHONUNBUFFERED=1
VOLUME ["/home/amlops/state"]
EXPOSE 8080
ENTRYPOINT ["tini", "--", "amlops"]
CMD ["run", "--repo", "/repo", "--path", "manifests", "--listen", "0.0.0.0:8080"]
