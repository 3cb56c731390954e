"""Rebuild ``catalog-all.json`` and ``catalog-text.json`` from OpenRouter snapshots (maintainers only).

The files hold facts only (ids, names, prices, context lengths, modalities, parameters) of a fixed selection of
models; every description is written here, and benchmark data is left out. Tests read the two files, never this.
Usage: python tests/data/build_catalog.py ../shared/data/openrouter
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
PROJECT = HERE.parents[1]
# Models the tests name, beyond the shipped curated list and the sandbox catalog.
NAMED = [
    "qwen/qwen3.8-27b",
    "openai/gpt-oss-20b:free",
    "~x-ai/grok-latest",
    "openrouter/auto",
    "deepgram/flux-tts:free",
]


def describe(m: dict) -> str:
    arch = m["architecture"]
    provider = m["id"].lstrip("~").split("/")[0]
    reads, writes = ", ".join(arch["input_modalities"]), ", ".join(arch["output_modalities"])
    text = f"A {provider} model. Reads {reads}; writes {writes}."
    if m.get("context_length"):
        text += f" Context of {m['context_length']:,} tokens."
    if "image" in arch["input_modalities"]:
        text += " Vision: it understands images."
    if m.get("hugging_face_id"):
        text += " Open weight: its weights are published."
    if "tools" in m.get("supported_parameters", []):
        text += " Calls tools."
    return text


def _one_model_a_line(models: list[dict]) -> str:
    return '{"data": [\n' + ",\n".join(json.dumps(m, ensure_ascii=False) for m in models) + "\n]}\n"


def main(source: Path) -> None:
    everything = json.loads((source / "models-all-2026-08.json").read_text())["data"]
    text_ids = [m["id"] for m in json.loads((source / "models-2026-08.json").read_text())["data"]]
    curated = json.loads((PROJECT / "src/instant402/catalog/curated_default.json").read_text())
    sandbox = [
        m["id"] for m in json.loads((PROJECT / "src/instant402/emulator/sandbox_catalog.json").read_text())["data"]
    ]
    wanted = set(curated) | set(NAMED) | set(sandbox)
    # Every kind of model the filters tell apart, then every 12th of the rest for breadth.
    kinds: dict[tuple, str] = {}
    for m in everything:
        arch = m["architecture"]
        key = (tuple(sorted(arch["input_modalities"])), tuple(sorted(arch["output_modalities"])))
        kinds.setdefault(key, m["id"])
    wanted |= set(kinds.values())
    wanted |= {m["id"] for i, m in enumerate(everything) if i % 12 == 0}
    chosen = []
    for m in everything:
        if m["id"] in wanted:
            chosen.append({k: (describe(m) if k == "description" else v) for k, v in m.items() if k != "benchmarks"})
    by_id = {m["id"]: m for m in chosen}
    text = [by_id[i] for i in text_ids if i in by_id]
    (HERE / "catalog-all.json").write_text(_one_model_a_line(chosen))
    (HERE / "catalog-text.json").write_text(_one_model_a_line(text))
    print(f"{len(chosen)} models, {len(text)} with text output")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
