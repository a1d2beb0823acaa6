# syntax=docker/dockerfile:1
# cbir images, one Dockerfile, four targets (all run as uid 10001, entrypoint deploy/docker/entrypoint.sh):
#
#   docker build --target server      -t REGISTRY/cbir-server:TAG .       # shard server: no torch
#   docker build --target coordinator -t REGISTRY/cbir-coordinator:TAG .  # + embed extra, CPU torch
#   docker build --target jobs        -t REGISTRY/cbir-jobs:TAG .         # + Spark, Java 17, CUDA torch
#   docker build --target web         -t REGISTRY/cbir-web:TAG .          # page + HTTP API: no torch
#
# Every install is pinned by constraints.txt. The CUDA build of torch on PyPI carries its own CUDA
# runtime (nvidia-* wheels): a GPU node only needs the driver (NVIDIA container toolkit).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stages
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install "pip==26.3"
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY cbir ./cbir
COPY protos ./protos
COPY jobs ./jobs
COPY shard_server ./shard_server
COPY coordinator ./coordinator
COPY web ./web

FROM build-base AS build-server
RUN /opt/venv/bin/pip install -c constraints.txt .

FROM build-base AS build-coordinator
# CPU-only torch/torchvision (a matched pair, ~10x smaller than the CUDA build); the
# constraints' ==2.14.1 pins also match the +cpu local versions.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN /opt/venv/bin/pip install -c constraints.txt \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple ".[embed]"

FROM build-base AS build-web
RUN /opt/venv/bin/pip install -c constraints.txt ".[web]"

FROM build-base AS build-jobs
RUN /opt/venv/bin/pip install -c constraints.txt ".[embed,spark]"

# ---------------------------------------------------------------- runtime base
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# libgomp1: OpenMP for Faiss and torch; tini reaps children and forwards SIGTERM (graceful drain).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cbir \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin cbir
COPY --chmod=0755 deploy/docker/entrypoint.sh /opt/cbir/entrypoint.sh
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/cbir/entrypoint.sh"]
CMD ["--help"]

# ---------------------------------------------------------------- targets
FROM runtime AS server
COPY --from=build-server /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50051 9090

FROM runtime AS coordinator
COPY --from=build-coordinator /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50052 9091

FROM runtime AS web
COPY --from=build-web /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080

FROM runtime AS jobs
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java
COPY --from=build-jobs /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/get-gpus-resources.sh /opt/cbir/get-gpus-resources.sh
ENV JAVA_HOME=/opt/java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python
USER 10001:10001
# Spark driver and block manager (spark.driver.port / spark.blockManager.port).
EXPOSE 7078 7079
