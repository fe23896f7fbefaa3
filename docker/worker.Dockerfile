# Worker (gRPC on 9000, /metrics and /health on 9100) with the embedded torch
# engine on the CPU build of torch, and the mocker engine.
#
# Build context: docker/ (see docker/build.sh). torch comes as the CPU build
# only, pinned as ${TORCH_VERSION}+cpu, which no CUDA wheel satisfies: from
# docker/wheels/ when docker/build.sh found the wheel on the host, else from
# TORCH_INDEX_URL (PyTorch's CPU index). A GPU image needs a CUDA base image
# and CUDA torch instead.
ARG TANDEM_BASE=tandem-base
FROM ${TANDEM_BASE} AS torch
USER root
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY ca-certificates/ /tmp/ca/
COPY wheels/ /tmp/wheels/
# --prefix: torch and the packages it adds (not those already in /opt/venv) land
# in a tree of their own, which is all the image below copies.
RUN test -n "$TORCH_VERSION" || { echo "TORCH_VERSION is not set (docker/build.sh sets it)"; exit 1; } \
 && { cat /etc/ssl/certs/ca-certificates.crt; find /tmp/ca -name '*.crt' -exec cat {} +; } > /tmp/ca-bundle.crt \
 && export PIP_CERT=/tmp/ca-bundle.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
 && pip install -q --prefix /opt/torch --find-links /tmp/wheels \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}+cpu" \
 && ls /opt/torch/lib/python3.11/site-packages/torch/__init__.py >/dev/null

FROM ${TANDEM_BASE}
COPY --from=torch /opt/torch/lib/python3.11/site-packages/ /opt/venv/lib/python3.11/site-packages/
COPY --from=torch /opt/torch/bin/ /opt/venv/bin/
RUN python -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(not v.endswith('+cpu'))"
EXPOSE 9000 9100
ENTRYPOINT ["tandem", "worker"]
CMD ["--engine", "torch", "--host", "0.0.0.0", "--port", "9000", "--metrics-port", "9100"]
