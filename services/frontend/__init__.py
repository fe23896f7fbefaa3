"""The OpenAI-compatible frontend: validate, tokenize, route, stream, detokenize.

Modules: `config` (FrontendConfig), `openai_schema` + `validation` + `json_fields` (typed
requests and their errors), `errors` (exception -> HTTP status), `models` (models from etcd,
tokenizer and router per model), `worker_client` (gRPC channels to workers),
`generation` (route -> Worker.GenerateStream -> detokenize -> stop strings -> migration),
`responses` (OpenAI bodies and SSE chunks), `http_server` (aiohttp routes), `metrics`,
`app` (the process's parts, started and stopped in order), `__main__` (entry point).
"""
