# Load-based planner (/metrics and /health on 9200): writes the worker count it
# wants to etcd; a connector (tandem up's, or Kubernetes') acts on it.
ARG TANDEM_BASE=tandem-base
FROM ${TANDEM_BASE}
EXPOSE 9200
ENTRYPOINT ["tandem", "planner"]
CMD ["--metrics-host", "0.0.0.0", "--metrics-port", "9200"]
