"""Demo data for the sandbox: a creator with a sandbox OpenRouter key and published text, JSON and image resources."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from instant402.accounts.models import User
from instant402.accounts.service import create_user
from instant402.catalog.models import CatalogModel
from instant402.catalog.sync import sync_catalog
from instant402.config import Settings
from instant402.db import Database
from instant402.keys.service import save_key
from instant402.keys.vault import Vault
from instant402.resources.models import Resource
from instant402.resources.service import create_resource, publish_resource
from instant402.resources.validation import ResourceIn

DEMO_USERNAME = "demo"

DEMO_RESOURCES = [
    {
        "slug": "haiku",
        "name": "Haiku on any topic",
        "description": "Three lines, five-seven-five, about the topic you send.",
        "tags": ["poetry", "text"],
        "model_id": "openai/gpt-4o-mini",
        "fallback_model_ids": ["google/gemini-2.5-flash-lite"],
        "system_prompt": "You are a careful poet. Answer with the haiku only.",
        "prompt_template": "Write a haiku about {{topic}} in a {{mood}} mood.",
        "parameters": [
            {
                "name": "topic",
                "type": "string",
                "required": True,
                "max_length": 200,
                "description": "What it is about.",
            },
            {
                "name": "mood",
                "type": "enum",
                "enum": ["calm", "playful", "melancholic"],
                "default": "calm",
                "description": "The tone of the poem.",
            },
        ],
        "max_tokens": 120,
        "price_atomic": 10_000,
    },
    {
        "slug": "contact-card",
        "name": "Contact card extractor",
        "description": "Turns a free-text signature into a structured contact card (JSON).",
        "tags": ["json", "extraction"],
        "model_id": "openai/gpt-4.1-mini",
        "system_prompt": "Extract contact details. Answer with JSON only.",
        "prompt_template": "Extract the contact card from this text:\n{{text}}",
        "parameters": [{"name": "text", "type": "string", "required": True, "max_length": 2000}],
        "max_tokens": 300,
        "output_kind": "json",
        "output_schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "email": {"type": "string"},
                "company": {"type": "string"},
            },
            "required": ["name", "email"],
        },
        "price_atomic": 20_000,
    },
    {
        "slug": "sticker",
        "name": "Sticker painter",
        "description": "A small square sticker picture of your subject.",
        "tags": ["image"],
        "model_id": "google/gemini-2.5-flash-image",
        "system_prompt": "Draw bold, simple sticker art.",
        "prompt_template": "A sticker of {{subject}}.",
        "parameters": [{"name": "subject", "type": "string", "required": True, "max_length": 200}],
        "max_tokens": 1000,
        "output_kind": "image",
        "price_atomic": 50_000,
    },
    {
        # Metered (x402 ``upto``): the buyer signs at most $0.02 and pays the model's real cost × 1.5 + $0.001.
        "slug": "summary",
        "name": "Summary, priced by length",
        "description": "A short summary of the text you send; you pay what the model cost, plus a small margin.",
        "tags": ["text", "metered"],
        "model_id": "openai/gpt-4o-mini",
        "system_prompt": "Summarize faithfully in at most three sentences.",
        "prompt_template": "Summarize this text:\n{{text}}",
        "parameters": [{"name": "text", "type": "string", "required": True, "max_length": 8000}],
        "max_tokens": 200,
        "pricing_mode": "metered",
        "markup": "1.5",
        "fee_atomic": 1_000,
        "max_price_atomic": 20_000,
    },
]


@dataclass
class DemoState:
    username: str
    password: str | None  # None when the account existed already (the password is in sandbox.json)
    resources: list[str]


def _secret_file(path: Path, make) -> str:
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def sandbox_openrouter_key(data_dir: Path) -> str:
    return _secret_file(data_dir / "openrouter-sandbox.key", lambda: "sk-or-v1-" + secrets.token_hex(32))


async def ensure_catalog(database: Database, settings: Settings) -> None:
    async with database.session() as db:
        has_models = await db.scalar(select(CatalogModel.id).limit(1))
    if not has_models:
        report = await sync_catalog(database, settings.openrouter_base_url, trigger="startup")
        if report.status != "ok":
            raise RuntimeError(f"catalog sync from the emulator failed: {report.error}")


async def ensure_demo(database: Database, settings: Settings, vault: Vault, payout_address: str) -> DemoState:
    """Create the demo creator and resources once; later starts reuse them (and re-save the key)."""
    key = sandbox_openrouter_key(settings.data_dir)
    password = None
    async with database.session() as db:
        user = await db.scalar(select(User).where(User.username == DEMO_USERNAME))
        if user is None:
            password = _secret_file(settings.data_dir / "demo-password.txt", lambda: secrets.token_urlsafe(12))
            user = await create_user(
                db,
                username=DEMO_USERNAME,
                email="demo@example.com",
                password=password,
                payout_address=payout_address,
            )
        # The emulator forgets keys between starts; saving the key again re-verifies it.
        await save_key(db, vault, settings, user.id, key)
        slugs = []
        for spec in DEMO_RESOURCES:
            existing = await db.scalar(
                select(Resource).where(Resource.owner_id == user.id, Resource.slug == spec["slug"])
            )
            if existing is None:
                saved = await create_resource(db, settings, user, ResourceIn(**spec))
                await publish_resource(db, user, saved.resource.id)
            slugs.append(f"{DEMO_USERNAME}/{spec['slug']}")
    return DemoState(DEMO_USERNAME, password, slugs)
