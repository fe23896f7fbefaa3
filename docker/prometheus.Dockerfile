# Prometheus from Debian's package, on the same base as the Tandem images: UI and
# API on 9090. compose.yaml mounts the scrape configuration from deploy/prometheus/.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus curl \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o prometheus /var/lib/prometheus/data
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/data", \
     "--web.listen-address=0.0.0.0:9090"]
