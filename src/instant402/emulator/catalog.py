"""The emulator's model catalog: loaded once, listing bodies pre-encoded per output-modality filter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

SANDBOX_CATALOG = Path(__file__).with_name("sandbox_catalog.json")

# What the auto router resolves to when a request names it (the first of these the catalog has).
AUTO_ROUTER_IDS = ("openrouter/auto",)
AUTO_ROUTER_TARGETS = ("openai/gpt-4o-mini", "openai/gpt-4.1-nano", "google/gemini-2.5-flash-lite")

# Tokens an output image counts for (what Gemini image models report per generated image).
IMAGE_OUTPUT_TOKENS = 1290


def _price(pricing: dict, key: str) -> Decimal:
    raw = pricing.get(key)
    if raw in (None, ""):
        return Decimal(0)
    value = Decimal(str(raw))
    # "-1" means "price unknown" (routers); the router bills as the model it picks.
    return value if value >= 0 else Decimal(0)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The facts the chat path needs about one model, parsed once at load time."""

    id: str
    name: str
    input_modalities: frozenset[str]
    output_modalities: frozenset[str]
    context_length: int
    max_completion_tokens: int | None
    prompt_price: Decimal
    completion_price: Decimal
    request_price: Decimal
    image_output_price: Decimal
    supported_parameters: frozenset[str]
    provider_name: str
    is_router: bool
    reasoning: bool

    @property
    def writes_text(self) -> bool:
        return "text" in self.output_modalities

    @property
    def writes_images(self) -> bool:
        return "image" in self.output_modalities


_PROVIDER_NAMES = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "google": "Google",
    "meta-llama": "Meta",
    "mistralai": "Mistral",
    "deepseek": "DeepSeek",
    "qwen": "Alibaba",
    "moonshotai": "Moonshot AI",
    "x-ai": "xAI",
    "z-ai": "Z.AI",
    "nvidia": "NVIDIA",
    "cohere": "Cohere",
    "openrouter": "OpenRouter",
}


def provider_name(model_id: str) -> str:
    prefix = model_id.lstrip("~").split("/", 1)[0]
    return _PROVIDER_NAMES.get(prefix, prefix.replace("-", " ").title())


def _model_info(raw: dict) -> ModelInfo:
    arch = raw.get("architecture") or {}
    pricing = raw.get("pricing") or {}
    top = raw.get("top_provider") or {}
    params = frozenset(raw.get("supported_parameters") or ())
    return ModelInfo(
        id=raw["id"],
        name=raw.get("name") or raw["id"],
        input_modalities=frozenset(arch.get("input_modalities") or ("text",)),
        output_modalities=frozenset(arch.get("output_modalities") or ("text",)),
        context_length=int(raw.get("context_length") or top.get("context_length") or 0),
        max_completion_tokens=top.get("max_completion_tokens"),
        prompt_price=_price(pricing, "prompt"),
        completion_price=_price(pricing, "completion"),
        request_price=_price(pricing, "request"),
        image_output_price=_price(pricing, "image_output"),
        supported_parameters=params,
        provider_name=provider_name(raw["id"]),
        is_router=str(pricing.get("prompt")) == "-1",
        reasoning="reasoning" in params or "include_reasoning" in params,
    )


class Catalog:
    """Models by id plus the encoded listing bodies; nothing is parsed per request."""

    def __init__(self, raw_models: list[dict]):
        self.raw = raw_models
        self.models: dict[str, ModelInfo] = {m["id"]: _model_info(m) for m in raw_models}
        self._listing_cache: dict[frozenset[str] | None, bytes] = {}
        self.listing(None)
        self.listing(frozenset({"text"}))

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        doc = json.loads(Path(path or SANDBOX_CATALOG).read_bytes())
        models = doc["data"] if isinstance(doc, dict) else doc
        return cls(models)

    def listing(self, modalities: frozenset[str] | None) -> bytes:
        """The `GET /models` body for an output-modality filter (None = every model), encoded once."""
        body = self._listing_cache.get(modalities)
        if body is None:
            if modalities is None:
                chosen = self.raw
            else:
                chosen = [
                    m
                    for m in self.raw
                    if modalities.intersection((m.get("architecture") or {}).get("output_modalities") or ())
                ]
            doc = {"data": chosen, "total_count": len(chosen), "links": {"next": None}}
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            # Distinct filters are few; cap the cache so odd query strings cannot grow it without bound.
            if len(self._listing_cache) < 64:
                self._listing_cache[modalities] = body
        return body

    def resolve(self, model_id: str) -> ModelInfo | None:
        """The model that answers a request for ``model_id`` (the auto router picks a concrete one)."""
        info = self.models.get(model_id)
        if info is not None and info.is_router and model_id in AUTO_ROUTER_IDS:
            for target in AUTO_ROUTER_TARGETS:
                if target in self.models:
                    return self.models[target]
            for candidate in self.models.values():
                if candidate.writes_text and not candidate.is_router:
                    return candidate
        return info


def parse_output_modalities(value: str | None) -> frozenset[str] | None:
    """The `output_modalities` query value as a filter; None means every model."""
    if value is None or not value.strip():
        return frozenset({"text"})
    parts = frozenset(p.strip().lower() for p in value.split(",") if p.strip())
    if "all" in parts:
        return None
    return parts or frozenset({"text"})
