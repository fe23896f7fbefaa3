# OpenAI-compatible frontend. No torch: it only tokenizes (tokenizer read from the model's GGUF).
ARG BASE=tandem-base
FROM ${BASE}
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
ENTRYPOINT ["tandem", "frontend"]
CMD ["--http-host", "0.0.0.0", "--http-port", "8000"]
