"""The OpenAI-compatible frontend: parse, tokenize, route, stream, detokenize, render.

Modules: `config` (FrontendConfig), `request_types` + `request_errors` (declared request
bodies, decoded and checked, and their errors), `openapi` (`/openapi.json`), `errors`
(exception -> HTTP status), `models` (models from etcd,
tokenizer and router per model), `endpoints` (one object per OpenAI API: parse, prompt ids,
renderer), `job` (the types the generation path shares), `generation` (route ->
Worker.GenerateStream -> migration), `output_processor` (detokenize, stop strings, logprobs,
max_tokens, usage), `stop_strings`, `worker_client` (one GenerateStream per worker),
`responses` (one renderer per API: SSE events and bodies), `http_server` (aiohttp routes),
`metrics`, `app` (the process's parts, started and stopped in order), `__main__` (entry point).
"""
