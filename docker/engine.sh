#!/usr/bin/env bash
# Makes a Docker engine and a compose command available on a Debian/Ubuntu machine:
# installs docker.io, the compose plugin (docker-compose-v2 where the release has
# it, else Debian's docker-compose) and debootstrap from the system's packages
# when they are missing, then starts dockerd if nothing answers on its socket
# (through systemd where it runs, else in the background, logging to
# $DOCKERD_LOG, /var/log/tandem-dockerd.log by default).
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
LOG=${DOCKERD_LOG:-/var/log/tandem-dockerd.log}

have_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }
# dockerd may be on the machine without its package (another build of it).
have_dockerd() { command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ]; }

missing=""
have_dockerd || missing="$missing docker.io"
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$missing debootstrap"
if ! have_compose; then
  if apt-cache show docker-compose-v2 >/dev/null 2>&1; then
    missing="$missing docker-compose-v2"
  else
    missing="$missing docker-compose"
  fi
fi
if [ -n "$missing" ]; then
  echo "installing system packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if docker info >/dev/null 2>&1; then
  echo "docker engine: running ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi
if [ -d /run/systemd/system ]; then
  $SUDO systemctl start docker
else
  echo "starting dockerd (log: $LOG)"
  $SUDO sh -c "nohup dockerd >>'$LOG' 2>&1 &"
fi
for _ in $(seq 60); do
  if $SUDO docker info >/dev/null 2>&1; then
    echo "docker engine: running ($($SUDO docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not answer within 60 s; see $LOG" >&2
exit 1
