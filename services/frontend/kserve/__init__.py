"""The KServe v2 gRPC inference service of the frontend (`GRPCInferenceService`, Triton's).

Text in, text out, with the tensor names of Triton's LLM backends
(`llm_request.py`), on the frontend's own generation path: the same model
lookup, tokenizer, router, worker streams, stop strings, migration, API keys,
limits and metrics as the OpenAI API.
"""
