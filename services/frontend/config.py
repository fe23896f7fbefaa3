"""Frontend settings: runtime (etcd/NATS), routing (embedded router), HTTP, model overrides,
API keys and request limits."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.router.config import RoutingConfig
from tandem.runtime.config import RuntimeConfig, option

from .api_keys import check_key


@dataclass(frozen=True, kw_only=True)
class FrontendConfig(RuntimeConfig, RoutingConfig):
    """The OpenAI-compatible HTTP frontend (`tandem frontend`)."""

    http_host: str = option("0.0.0.0", "Address the OpenAI HTTP API listens on.")
    http_port: int = option(8000, "Port of the OpenAI HTTP API (0 = pick a free one).")
    grpc_port: int = option(
        8001,
        "Port of the KServe v2 gRPC inference API (Triton's GRPCInferenceService), on "
        "--http-host; 0 = do not serve it.",
    )
    router_url: str = option(
        "", "host:port of a standalone router service; empty = route in-process."
    )
    model_name: str = option(
        "", "Serve this model name even before any worker registers it (with --model-path)."
    )
    model_path: str = option(
        "",
        "Tokenizer/chat template source (GGUF or HF dir) for --model-name; overrides the card.",
    )
    context_length: int = option(
        0, "Context length for --model-name when no model card says (0 = from the file)."
    )
    max_migrations: int = option(
        3, "Times a request may move to another worker after its worker fails."
    )
    max_prompt_tokens: int = option(
        0,
        "Most tokens a prompt may have (0 = the model's context length); a longer one is "
        "refused with 400 context_length_exceeded, before or while it is tokenized.",
    )
    api_key: list[str] = option(
        default_factory=list,
        help="Key a client must send as 'Authorization: Bearer <key>' on every API route "
        "(else 401; /health and /metrics stay open); repeat or comma-separate for several; "
        "none = the API is open. Prefer TANDEM_API_KEY or --api-key-file: flags show in `ps`.",
        secret=True,
    )
    api_key_file: str = option(
        "",
        "File of more API keys, one per line (blank lines and # comments ignored); read at start.",
    )
    max_concurrent_requests: int = option(
        4096,
        "Most API requests served at once, a stream until its last byte; beyond: 503 with "
        "Retry-After.",
    )
    max_body_bytes: int = option(64 * 1024 * 1024, "Largest request body accepted; beyond: 413.")
    max_local_prefill_length: int = option(
        1000,
        "A request routed to a decode worker is prefilled on a prefill worker only when more "
        "prompt tokens than this are uncached there (else the decode worker prefills it); "
        "etcd key tandem/{ns}/disagg/settings overrides it at run time.",
    )
    max_prefill_queue_size: int = option(
        32,
        "... and only while the model's prefill queue holds fewer jobs than this; the etcd "
        "key overrides it at run time too.",
    )

    def __post_init__(self) -> None:
        RoutingConfig.__post_init__(self)
        if not 0 <= self.http_port < 65536:
            raise ValueError("http_port must be in [0, 65535]")
        if not 0 <= self.grpc_port < 65536:
            raise ValueError("grpc_port must be in [0, 65535] (0: no KServe gRPC API)")
        if self.model_path and not self.model_name:
            raise ValueError("--model-path needs --model-name")
        if self.max_migrations < 0:
            raise ValueError("max_migrations must be >= 0")
        if self.max_prompt_tokens < 0:
            raise ValueError("max_prompt_tokens must be >= 0")
        for key in self.api_key:
            check_key(key)
        if self.max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if self.max_local_prefill_length < 0 or self.max_prefill_queue_size < 0:
            raise ValueError("max_local_prefill_length and max_prefill_queue_size must be >= 0")
