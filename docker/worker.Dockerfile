# Worker with the embedded torch engine (CPU build of torch; use a CUDA base + CUDA torch for GPUs)
# and the mocker engine.
ARG BASE=tandem-base
FROM ${BASE}
USER root
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
USER tandem
EXPOSE 9000 9100
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=10 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9100/health').status != 200)"
ENTRYPOINT ["tandem", "worker"]
CMD ["--engine", "torch", "--host", "0.0.0.0", "--port", "9000", "--metrics-port", "9100"]
