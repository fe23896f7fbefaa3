#!/usr/bin/env bash
# Builds the local base image every Tandem image can start from when no image
# registry is reachable: a Debian root filesystem made by debootstrap from
# Debian's package mirror, imported with `docker import`.
#
#   docker/build-base.sh                 # -> tandem-debian:bookworm (kept if it exists)
#   docker/build-base.sh --force         # rebuild it
#   docker/build.sh --base tandem-debian:bookworm   # then build the images on it
#
# Environment: DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
# DEBIAN_SECURITY_MIRROR (the mirror's debian-security),
# BASE_TAG (tandem-debian:$DEBIAN_SUITE). Needs root (or sudo) and debootstrap
# (`docker/engine.sh` installs it).
set -euo pipefail

SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}
TAG=${BASE_TAG:-tandem-debian:$SUITE}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

if [ "${1:-}" != "--force" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists (--force rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
  echo "debootstrap is missing: run docker/engine.sh or apt-get install debootstrap" >&2
  exit 1
}

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/tandem-rootfs.XXXXXX")
# The root filesystem is only a step on the way to the image.
trap '$SUDO rm -rf "$rootfs"' EXIT

echo "debootstrap suite=$SUITE mirror=$MIRROR into $rootfs"
$SUDO debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
  tail -20 "$rootfs.log" >&2
  echo "debootstrap failed (full log: $rootfs.log)" >&2
  exit 1
}
rm -f "$rootfs.log"

# The same apt sources as Debian's own images (release, updates, security),
# and nothing cached: images add their packages with apt-get themselves.
$SUDO rm -f "$rootfs/etc/apt/sources.list"
$SUDO tee "$rootfs/etc/apt/sources.list.d/debian.sources" >/dev/null <<SOURCES
Types: deb
URIs: ${MIRROR}
Suites: ${SUITE} ${SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${SECURITY_MIRROR}
Suites: ${SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
$SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

$SUDO tar -C "$rootfs" --numeric-owner -c . |
  docker import --change 'CMD ["bash"]' --message "debootstrap $SUITE from $MIRROR" - "$TAG" >/dev/null
echo "base image $TAG: $(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
