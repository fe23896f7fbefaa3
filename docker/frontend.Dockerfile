# OpenAI-compatible HTTP frontend on port 8000. No torch: it tokenizes with the
# tokenizer read from the model's GGUF file.
ARG TANDEM_BASE=tandem-base
FROM ${TANDEM_BASE}
EXPOSE 8000
ENTRYPOINT ["tandem", "frontend"]
CMD ["--http-host", "0.0.0.0", "--http-port", "8000"]
