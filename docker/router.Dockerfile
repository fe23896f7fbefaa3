# Standalone KV-aware router (gRPC on 9300, /metrics and /health on 9301),
# shared by several frontends started with --router-url router:9300.
ARG TANDEM_BASE=tandem-base
FROM ${TANDEM_BASE}
EXPOSE 9300 9301
ENTRYPOINT ["tandem", "router"]
CMD ["--host", "0.0.0.0", "--port", "9300", "--metrics-port", "9301"]
