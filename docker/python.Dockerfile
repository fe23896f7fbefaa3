# The runtime every Tandem Python image shares: Debian's Python 3.11 and the
# unprivileged user the services run as; /opt/venv (filled by base.Dockerfile)
# comes first on PATH.
#
# BASE_IMAGE is the public debian:bookworm-slim by default; where no image
# registry is reachable, docker/build-base.sh makes tandem-debian:bookworm with
# debootstrap and `docker/build.sh --base tandem-debian:bookworm` builds on it.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# Set in full: an imported root filesystem carries no PATH of its own.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /opt/tandem --no-create-home tandem
