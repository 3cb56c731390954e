"""Catalog benchmark: sync time and peak RSS (549 real and 20,000 synthetic models), search latency over 20,000.

Run from the repository root:  .venv/bin/python benchmarks/catalog_bench.py [--backends sqlite,postgresql]

The emulator serves each catalog from its own process; every sync runs in a fresh subprocess, so its peak RSS is the
sync's own (plus the interpreter and imports). Numbers are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "openrouter" / "models-all-2026-08.json"
PG_URL = os.environ.get("INSTANT402_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
PYTHON = sys.executable

SEARCHES = {
    "default listing (curated first)": {},
    "q=claude": {"q": "claude"},
    "q=vision tools=true": {"q": "vision", "tools": "true"},
    "modality=image sort=newest": {"modality": "image", "sort": "newest"},
    "max_prompt_price=1 sort=prompt_price": {"max_prompt_price": "1", "sort": "prompt_price"},
    "provider=openai min_context=100000 page=3": {"provider": "openai", "min_context": "100000", "page": "3"},
    "q='coding agent' free=true": {"q": "coding agent", "free": "true"},
}


def synthetic_catalog(n: int, path: Path) -> None:
    """``n`` models derived from the real ones: new ids and names, prices nudged, everything else kept."""
    real = json.loads(DATA.read_bytes())["data"]
    out = []
    for i in range(n):
        model = copy.deepcopy(real[i % len(real)])
        base, _, suffix = model["id"].partition(":")
        model["id"] = f"{base}-v{i}" + (f":{suffix}" if suffix else "")
        model["canonical_slug"] = model["id"]
        model["name"] = f"{model['name']} v{i}"
        for key in ("prompt", "completion"):
            price = Decimal(model["pricing"][key])
            if price > 0:
                model["pricing"][key] = format(price * (1 + Decimal(i % 97) / 1000), "f")
        out.append(model)
    path.write_text(json.dumps({"data": out, "total_count": len(out), "links": {"next": None}}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(catalog: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(ROOT / ".venv/bin/instant402"), "emulator", "--port", str(port), "--catalog", str(catalog)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/api/v1"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("emulator did not start")


def database_env(backend: str, workdir: Path, schema: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if backend == "postgresql":
        env |= {"INSTANT402_DATABASE_URL": PG_URL, "INSTANT402_DATABASE_SCHEMA": schema}
    else:
        env |= {"INSTANT402_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'bench.db'}"}
    env["INSTANT402_DATA_DIR"] = str(workdir)
    env["INSTANT402_MODE"] = "test"  # no master key needed, no background sync
    env["INSTANT402_RATE_LIMIT_IP_PER_MINUTE"] = "0"  # the search loop sends thousands of requests from one address
    return env


async def pg_schema(action: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        sql = f'CREATE SCHEMA "{name}"' if action == "create" else f'DROP SCHEMA IF EXISTS "{name}" CASCADE'
        await conn.execute(sql)
    finally:
        await conn.close()


def child(args: list[str], env: dict[str, str]) -> dict:
    result = subprocess.run([PYTHON, __file__, *args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- work done inside the fresh subprocesses ------------------------------------------------------------------


async def child_migrate() -> dict:
    from instant402.config import load_settings
    from instant402.db import Database
    from instant402.db.migrate import upgrade

    db = Database(load_settings())
    await upgrade(db.engine)
    await db.dispose()
    return {}


async def child_sync(base_url: str) -> dict:
    from instant402.catalog.sync import sync_catalog
    from instant402.config import load_settings
    from instant402.db import Database

    db = Database(load_settings())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = await sync_catalog(db, base_url, trigger="bench")
    seconds = time.perf_counter() - start
    await db.dispose()
    assert report.ok, report.error
    return {
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
        "counts": report.counts(),
    }


async def child_search(rounds: int) -> dict:
    import httpx

    from instant402.app import create_app
    from instant402.config import load_settings

    app = create_app(load_settings())
    out = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        for label, params in SEARCHES.items():
            for _ in range(10):  # warm-up
                r = await client.get("/api/v1/models", params=params)
                assert r.status_code == 200, r.text
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                r = await client.get("/api/v1/models", params=params)
                samples.append((time.perf_counter() - start) * 1000)
            samples.sort()
            out[label] = {
                "total": r.json()["total"],
                "p50_ms": round(statistics.median(samples), 2),
                "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
            }
    await app.state.db.dispose()
    return out


def run_child(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "migrate":
        result = asyncio.run(child_migrate())
    elif kind == "sync":
        result = asyncio.run(child_sync(argv[1]))
    else:
        result = asyncio.run(child_search(int(argv[1])))
    print(json.dumps(result))


# --- the driver -----------------------------------------------------------------------------------------------


def bench_backend(backend: str, catalogs: dict[str, Path], rounds: int) -> dict:
    results = {}
    for label, path in catalogs.items():
        emulator, base_url = start_emulator(path)
        workdir = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
        schema = f"bench_{secrets.token_hex(4)}" if backend == "postgresql" else None
        if schema:
            asyncio.run(pg_schema("create", schema))
        try:
            env = database_env(backend, workdir, schema)
            child(["migrate"], env)
            first = child(["sync", base_url], env)
            again = child(["sync", base_url], env)
            results[label] = {"first_sync": first, "unchanged_resync": again}
            print(backend, label, json.dumps(results[label]), file=sys.stderr)
            if label.startswith("20000"):
                results["search over 20000"] = child(["search", str(rounds)], env)
        finally:
            emulator.terminate()
            emulator.wait(10)
            if schema:
                asyncio.run(pg_schema("drop", schema))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--synthetic", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=200, help="timed requests per search query")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="catalog-bench-data-"))
    synthetic = tmp / "synthetic.json"
    synthetic_catalog(opts.synthetic, synthetic)
    catalogs = {"549 real models": DATA, f"{opts.synthetic} synthetic models": synthetic}
    report = {backend: bench_backend(backend, catalogs, opts.rounds) for backend in opts.backends.split(",")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("migrate", "sync", "search"):
        run_child(sys.argv[1:])
    else:
        main()
