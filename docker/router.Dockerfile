# Standalone KV-aware router, shared by several frontends over gRPC.
ARG BASE=tandem-base
FROM ${BASE}
EXPOSE 9300 9301
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9301/health').status != 200)"
ENTRYPOINT ["tandem", "router"]
CMD ["--host", "0.0.0.0", "--port", "9300", "--metrics-port", "9301"]
