"""Frontend settings: runtime (etcd/NATS), routing (embedded router), HTTP, model overrides."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.router.config import RoutingConfig
from tandem.runtime.config import RuntimeConfig, option


@dataclass(frozen=True, kw_only=True)
class FrontendConfig(RuntimeConfig, RoutingConfig):
    """The OpenAI-compatible HTTP frontend (`tandem frontend`)."""

    http_host: str = option("0.0.0.0", "Address the OpenAI HTTP API listens on.")
    http_port: int = option(8000, "Port of the OpenAI HTTP API (0 = pick a free one).")
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

    def __post_init__(self) -> None:
        RoutingConfig.__post_init__(self)
        if not 0 <= self.http_port < 65536:
            raise ValueError("http_port must be in [0, 65535]")
        if self.model_path and not self.model_name:
            raise ValueError("--model-path needs --model-name")
        if self.max_migrations < 0:
            raise ValueError("max_migrations must be >= 0")
