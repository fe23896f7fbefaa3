# nats-server (JetStream) from Debian's package, on the same base as the Tandem
# images: client port 4222, monitoring (/healthz) on 8222.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nats-server curl \
 && rm -rf /var/lib/apt/lists/* \
 && { id -u nats >/dev/null 2>&1 || useradd --system --no-create-home nats; } \
 && install -d -o nats /var/lib/nats
USER nats
EXPOSE 4222 8222
# The JetStream store lives in the container: `docker compose down` leaves nothing behind.
ENTRYPOINT ["/usr/sbin/nats-server"]
CMD ["--jetstream", "--store_dir", "/var/lib/nats", "--http_port", "8222"]
