# The fedkube server image: the `fedkube` CLI with the operator and dashboard
# extras. The operator, reducer, combiner and dashboard all run from it.
#
#   docker build -t ghcr.io/fedkube/fedkube:0.1.0 .
#   docker run --rm ghcr.io/fedkube/fedkube:0.1.0 --help
#
# Build arguments:
#   BASE_IMAGE     the Python base image of both stages (pinned: a rebuild gets the same Python)
#   VERSION        the image version label (keep it equal to pyproject.toml's version)
#   PIP_INDEX_URL  a private package index (optional)
#   PIP_CERT       a CA bundle pip should trust, e.g. behind a TLS-intercepting proxy
#                  (optional; mount the bundle into the build, e.g. podman build -v)
ARG BASE_IMAGE=python:3.11.17-slim-bookworm

# ---------------------------------------------------------------- builder
# Builds this repository's wheel and installs it with its dependencies into the
# venv /opt/fedkube; the runtime stage copies only that venv.
FROM ${BASE_IMAGE} AS builder

# No value: pip sees them only when a build passes them.
ARG PIP_INDEX_URL
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONSAFEPATH=1

RUN python3 -m venv /opt/fedkube \
    && /opt/fedkube/bin/python3 -m pip install --no-cache-dir pip==26.3

WORKDIR /src
# Dependencies first, from pyproject.toml alone: a layer that a change to the code
# does not invalidate (rebuilds after an edit take seconds, not minutes). Every
# version is pinned by constraints.txt (python scripts/lock_images.py), also those of
# the wheel's build.
COPY pyproject.toml constraints.txt ./
ENV PIP_CONSTRAINT=/src/constraints.txt
RUN /opt/fedkube/bin/python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extra = p["optional-dependencies"]; print("\n".join(p["dependencies"] + [d for e in ["operator", "dashboard"] for d in extra[e]]))' > /tmp/requirements.txt \
    && /opt/fedkube/bin/python3 -m pip install --no-cache-dir -r /tmp/requirements.txt

# Then this checkout's wheel: the project metadata and the package-dir mapping of
# pyproject.toml (the component folders are packaged as fedkube.<component>).
COPY README.md ./
COPY fedkube/ fedkube/
COPY operator/ operator/
COPY reducer/ reducer/
COPY combiner/ combiner/
COPY client/ client/
COPY dashboard/ dashboard/

RUN /opt/fedkube/bin/python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/fedkube/bin/python3 -m pip install --no-cache-dir --no-deps "$(ls /wheels/fedkube-*.whl)" \
    && /opt/fedkube/bin/python3 -m pip check \
    && /opt/fedkube/bin/fedkube --help > /dev/null

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fedkube" \
      org.opencontainers.image.description="Kubernetes-native federated learning: the fedkube operator, reducer, combiner and dashboard" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/fedkube/fedkube" \
      org.opencontainers.image.licenses="Apache-2.0"

# HOME=/tmp: pods run with a read-only root filesystem and an emptyDir at /tmp
# (Streamlit and other libraries write their settings under $HOME).
ENV PATH=/opt/fedkube/bin:$PATH \
    VIRTUAL_ENV=/opt/fedkube \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp

# A numeric non-root user (pods run with runAsNonRoot: true), with a passwd
# entry for libraries that look the user up; /var/lib/fedkube is the roles'
# --workdir (an emptyDir in pods).
RUN groupadd --gid 10001 fedkube \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /tmp --shell /usr/sbin/nologin fedkube \
    && mkdir -p /app /var/lib/fedkube \
    && chown 10001:10001 /app /var/lib/fedkube

COPY --from=builder /opt/fedkube /opt/fedkube

WORKDIR /app
USER 10001:10001

ENTRYPOINT ["fedkube"]
CMD ["--help"]
