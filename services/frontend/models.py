"""The models this frontend serves: model cards from etcd, tokenizers, and a router per model.

A model appears when the first worker serving it registers (its card is read
from `tandem/{ns}/models/{model}`, its tokenizer loaded off the event loop)
or at start when configured with --model-name/--model-path. Each model has a
live worker view (`InstanceSet`) and its own router over it (built by the
router library's `ModelRouters`), so workers that join or leave are used or
dropped without a restart. A model whose workers all left stays known
(requests get 503, not 404). So does one about to be served: named by
--model-name, being loaded, with a model card in etcd, or any model while the
models found at start are still loading; 404 is for a name nothing knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from tandem.router.api import BaseRouter
from tandem.router.metrics import RouterMetrics
from tandem.router.model_routers import ModelRouters
from tandem.runtime.discovery import Discovery
from tandem.runtime.etcd_client import ETCD_ERRORS
from tandem.runtime.gc_tuning import freeze_heap
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import InstanceSet
from tandem.runtime.messaging import Messaging
from tandem.runtime.model_card import ModelCard, default_model_path
from tandem.runtime.tokenizer import Tokenizer

from .config import FrontendConfig
from .errors import ModelNotFoundError, ServiceUnavailableError

log = logging.getLogger(__name__)

_CARD_RETRY_SECONDS = 0.25
_CARD_WAIT_SECONDS = 30.0
# No model is named this long; a longer name is answered 404 without asking etcd.
_MAX_LOOKUP_NAME_CHARS = 1024


@dataclass(slots=True)
class ServedModel:
    """One model: its card, tokenizer, live workers and router."""

    name: str
    card: ModelCard
    tokenizer: Tokenizer
    workers: InstanceSet
    router: BaseRouter
    # The frontend's --max-prompt-tokens (0: the context length alone limits prompts).
    max_prompt_tokens: int = 0
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context_length(self) -> int:
        return self.card.context_length or self.tokenizer.context_length or 0

    @property
    def prompt_token_limit(self) -> int:
        """The most tokens a prompt may have: --max-prompt-tokens within the context length."""
        limits = [n for n in (self.max_prompt_tokens, self.context_length) if n > 0]
        return min(limits) if limits else sys.maxsize

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.card.eos_token_ids or self.tokenizer.eos_token_ids


def local_model_path(path: str) -> str:
    """`path` from a worker's card as this machine sees it.

    The bundled GGUF lives in site-packages, whose location differs between a
    worker's image and ours: a card naming a missing copy of it means ours.
    """
    default = default_model_path()
    if (
        path
        and not os.path.exists(path)
        and default
        and os.path.basename(path) == os.path.basename(default)
    ):
        return default
    return path or default


class ModelRegistry:
    """Owns the served models and their tokenizers; follows workers in etcd.

    The models' worker views and routers are owned by one `ModelRouters`; local
    routers of every model report into one `RouterMetrics` in `metrics_registry`.
    """

    def __init__(
        self,
        config: FrontendConfig,
        discovery: Discovery,
        messaging: Messaging | None = None,
        metrics_registry: CollectorRegistry | None = None,
        on_worker_removed: Callable[[InstanceInfo], None] | None = None,
    ) -> None:
        self._config = config
        self._discovery = discovery
        # With --router-url the router service exports the router metrics, not us.
        router_metrics = None if config.router_url else RouterMetrics(metrics_registry)
        self._routers = ModelRouters(
            config,
            discovery,
            messaging=messaging,
            metrics=router_metrics,
            remote_url=config.router_url,
            # The all-workers view already logs every worker that comes and goes.
            log_changes=False,
        )
        self._on_worker_removed = on_worker_removed
        # Conditional disaggregation runs only beside the in-process kv router, the one that
        # gets NATS (app.py); elsewhere a model's prefill workers are told of, once each.
        self._disaggregates = messaging is not None
        self._idle_prefill_models: set[str] = set()
        self._models: dict[str, ServedModel] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._tokenizers: dict[tuple[str, str | None], Tokenizer] = {}
        self._all_workers: InstanceSet | None = None
        # The loads of the models found at start; until they end, any name may be one.
        self._first_loads: list[asyncio.Task[None]] | None = None

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    async def lookup(self, name: str) -> ServedModel:
        """The model `name`; 503 with Retry-After while it is about to be served, else 404."""
        model = self._models.get(name)
        if model is not None:
            return model
        if await self._coming(name):
            raise ServiceUnavailableError(
                f"The model '{name}' is not served yet: no worker of it has registered here. "
                "Retry shortly.",
            )
        # Naming what is served catches typos.
        served = ", ".join(sorted(m.name for m in self.served()))
        raise ModelNotFoundError(
            f"The model '{name}' does not exist. Served here: {served or 'none'}.",
            param="model",
        )

    async def _coming(self, name: str) -> bool:
        """Whether `name` is a model this frontend is about to serve."""
        if name == self._config.model_name or name in self._loading:
            return True
        if self._first_loads is None or not all(t.done() for t in self._first_loads):
            return True
        if len(name) > _MAX_LOOKUP_NAME_CHARS:
            return False
        try:
            return await self._discovery.get_model_card(name) is not None
        except ETCD_ERRORS:
            return True  # etcd cannot say: the model may well be there

    async def prefill_router(self, name: str) -> BaseRouter | None:
        """The router over model `name`'s prefill workers (built on first use)."""
        return await self._routers.prefill_router(name)

    def known(self) -> list[ServedModel]:
        """Every model seen so far, with or without live workers."""
        return list(self._models.values())

    def served(self) -> list[ServedModel]:
        """Models with at least one live worker (or configured explicitly)."""
        static = self._config.model_name
        return [m for m in self._models.values() if len(m.workers) or m.name == static]

    async def start(self) -> None:
        if self._config.model_name and self._config.model_path:
            card = ModelCard(
                name=self._config.model_name,
                model_path=self._config.model_path,
                context_length=self._config.context_length,
                block_size=0,  # the workers' own, learnt by the router when they register
            )
            await self._add_model(card)
        self._all_workers = self._discovery.instance_set("worker")
        self._all_workers.on_change(self._on_worker_change)
        await self._all_workers.start()
        for info in self._all_workers:
            self._on_worker_change("added", info)
        self._first_loads = list(self._loading.values())

    async def stop(self) -> None:
        for task in self._loading.values():
            task.cancel()
        for task in self._loading.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._routers.close()
        if self._all_workers is not None:
            await self._all_workers.close()

    def _on_worker_change(self, kind: str, info: InstanceInfo) -> None:
        if kind == "removed":
            if self._on_worker_removed is not None:
                self._on_worker_removed(info)
            return
        name = info.model
        if info.role == "prefill" and not self._disaggregates:
            self._warn_prefill_unused(name)
        if not name or name in self._models or name in self._loading:
            return
        self._loading[name] = asyncio.create_task(self._load_model(name), name=f"load-model {name}")

    def _warn_prefill_unused(self, model: str) -> None:
        if model in self._idle_prefill_models:
            return
        self._idle_prefill_models.add(model)
        log.warning(
            "model %r has prefill workers, but this frontend prefills every prompt on the "
            "decode workers (--max-local-prefill-length and --max-prefill-queue-size do "
            "nothing): conditional disaggregation needs --router-mode kv without --router-url",
            model,
        )

    async def _load_model(self, name: str) -> None:
        try:
            deadline = time.monotonic() + _CARD_WAIT_SECONDS
            raw = await self._discovery.get_model_card(name)
            # A worker may register its instance a moment before its card.
            while raw is None and time.monotonic() < deadline:
                await asyncio.sleep(_CARD_RETRY_SECONDS)
                raw = await self._discovery.get_model_card(name)
            if raw is None:
                log.warning("workers serve model %s but it has no model card; not serving it", name)
                return
            await self._add_model(ModelCard.from_dict(raw))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not load model %s", name)
        finally:
            self._loading.pop(name, None)

    async def _add_model(self, card: ModelCard) -> None:
        path = local_model_path(card.model_path)
        key = (path, card.chat_template)
        tokenizer = self._tokenizers.get(key)
        if tokenizer is None:
            started = time.monotonic()
            tokenizer = await asyncio.to_thread(
                Tokenizer.from_path, path, chat_template=card.chat_template
            )
            self._tokenizers[key] = tokenizer
            log.info(
                "tokenizer for %s loaded from %s in %.2fs",
                card.name,
                path,
                time.monotonic() - started,
            )
        route = await self._routers.build(card.name)
        self._models[card.name] = ServedModel(
            card.name,
            card,
            tokenizer,
            route.workers,
            route.router,
            max_prompt_tokens=self._config.max_prompt_tokens,
        )
        # The tokenizer tables and router state live as long as the process.
        freeze_heap()
        log.info(
            "serving model %s (%d workers, router %s)",
            card.name,
            len(route.workers),
            self._config.router_mode,
        )
