# etcd from Debian's packages, on the same base as the Tandem images: clients on 2379.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server etcd-client \
 && rm -rf /var/lib/apt/lists/* \
 && { id -u etcd >/dev/null 2>&1 || useradd --system --no-create-home etcd; } \
 && install -d -o etcd /var/lib/etcd
USER etcd
EXPOSE 2379
# The data directory lives in the container: `docker compose down` leaves nothing behind.
ENTRYPOINT ["/usr/bin/etcd"]
CMD ["--name", "etcd", "--data-dir", "/var/lib/etcd/default", \
     "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://etcd:2379"]
