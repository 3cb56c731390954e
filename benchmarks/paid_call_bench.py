"""Paid calls through instant402 against the x402 SDK's own middleware on the same devnet.

Both routes run in this process under uvicorn (background threads) with the in-process SDK facilitator and the
py-evm devnet; buyers pay with the SDK client; the OpenRouter emulator runs in its own process. instant402's
route also resolves the resource in SQLite, validates the input, claims the payment, calls the emulator through
the openai SDK and writes the usage row. Reported (not asserted):
- whole paid call median / p95 (sequential) for both routes and their ratio (target <= 1.3x);
- paid calls per second at concurrency 8 (target >= 0.8x the SDK route);
- CPU per paid call in instant402's own code (yappi self time in src/instant402, emulator and devnet excluded),
  and where the rest of the CPU goes.
Run: ``.venv/bin/python benchmarks/paid_call_bench.py [--calls 60] [--concurrency 8] [--postgres URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import asyncpg
import yappi
from benchmarks.upstream_overhead import start_emulator
from tests.support.emulator import EmulatorHandle
from tests.support.market import live_market
from tests.support.servers import serve_in_thread
from tests.support.x402 import sdk_middleware_app

from instant402.catalog.sync import sync_catalog
from instant402.config import Mode, Settings
from instant402.db import Database
from instant402.db.migrate import upgrade
from instant402.payments.buyer import make_buyer_client, pay_url
from instant402.payments.devnet import Devnet, build_facilitator

PRICE = 10_000
SRC = str(Path(__file__).resolve().parents[1] / "src" / "instant402")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one(client, url: str, body: dict) -> float:
    start = time.perf_counter()
    result = await pay_url(client, url, json=body)
    if result.response.status_code != 200:
        raise RuntimeError(f"{url}: {result.response.status_code} {result.response.text[:300]}")
    return (time.perf_counter() - start) * 1000


async def measure(name: str, clients, url: str, body: dict, calls: int, concurrency: int) -> dict:
    for _ in range(3):
        await one(clients[0], url, body)
    cpu0 = time.process_time()
    seq = [await one(clients[0], url, body) for _ in range(calls)]
    cpu_ms = (time.process_time() - cpu0) / calls * 1000
    per_worker = max(1, calls // concurrency)

    async def worker(i: int) -> None:
        for _ in range(per_worker):
            await one(clients[i], url, body)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    rate = per_worker * concurrency / (time.perf_counter() - start)
    result = {"median": statistics.median(seq), "p95": pct(seq, 0.95), "rate": rate, "cpu": cpu_ms}
    print(
        f"{name:>22}: median {result['median']:6.1f} ms  p95 {result['p95']:6.1f} ms  "
        f"{rate:5.1f} calls/s at {concurrency}  process CPU {cpu_ms:5.1f} ms/call"
    )
    return result


def own_code_cpu(calls: int) -> None:
    """Self CPU time per call grouped by package, over every thread (yappi), the buyer's included."""
    groups: dict[str, float] = defaultdict(float)
    for stat in yappi.get_func_stats():
        path = stat.module or ""
        if path.startswith(SRC):
            part = path[len(SRC) + 1 :]
            stand_in = part.startswith(("emulator/", "payments/devnet/"))
            groups["instant402 stand-ins (emulator, devnet)" if stand_in else "instant402 (own code)"] += stat.tsub
        elif "site-packages/" in path:
            groups[path.split("site-packages/")[1].split("/")[0]] += stat.tsub
        else:
            groups["python stdlib / other"] += stat.tsub
    print(f"CPU self time per paid call by package ({calls} sequential calls, all threads, yappi):")
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:16]:
        print(f"  {name:<40} {seconds / calls * 1000:7.2f} ms")


async def run(calls: int, concurrency: int, postgres_url: str | None) -> None:
    devnet = Devnet.start(buyers=concurrency)
    facilitator = build_facilitator(devnet)
    allow = [{"network": devnet.network, "asset": devnet.token}]
    clients = [make_buyer_client(b.private_key, allow_assets=allow) for b in devnet.buyers]
    payee = devnet.new_account(eth_wei=0)

    # The emulator runs in its own process: its CPU is OpenRouter's, not ours.
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    try:
        with serve_in_thread(sdk_middleware_app(devnet, facilitator, payee.address, PRICE)) as url:
            # The chain grows as it runs: measure the SDK route before and after ours and compare with the mean.
            before = await measure("SDK middleware route", clients, f"{url}/paid", {"q": "hi"}, calls, concurrency)
            ours = await measure_ours(clients, devnet, facilitator, emulator, calls, concurrency, postgres_url)
            after = await measure("SDK middleware (again)", clients, f"{url}/paid", {"q": "hi"}, calls, concurrency)
    finally:
        emulator.close()
        emulator_proc.terminate()
    base = {k: (before[k] + after[k]) / 2 for k in before}
    print(f"latency ratio (median): {ours['median'] / base['median']:.2f}x   p95: {ours['p95'] / base['p95']:.2f}x")
    print(f"throughput ratio at concurrency {concurrency}: {ours['rate'] / base['rate']:.2f}x")
    print(f"extra process CPU per call over the SDK route: {ours['cpu'] - base['cpu']:.1f} ms")
    own_code_cpu(calls)


async def measure_ours(clients, devnet, facilitator, emulator, calls, concurrency, postgres_url) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base_settings = {"mode": Mode.test, "data_dir": Path(tmp), "log_level": "WARNING", "log_format": "text"}
        if postgres_url:
            schema = f"bench_{secrets.token_hex(4)}"
            await _pg(postgres_url, f'CREATE SCHEMA "{schema}"')
            base_settings |= {"database_url": postgres_url, "database_schema": schema}
        db = Database(Settings(**base_settings))
        await upgrade(db.engine)
        await sync_catalog(db, emulator.base_url)
        await db.dispose()
        with live_market(base_settings, emulator, devnet, facilitator, creator_concurrency=64) as market:
            seller = market.seller()
            res = market.publish(seller, max_tokens=64)
            ours = await measure("instant402 paid route", clients, res["url"], {"topic": "sea"}, calls, concurrency)
            yappi.set_clock_type("cpu")
            yappi.start(builtins=False, profile_threads=True)
            for _ in range(calls):
                await one(clients[0], res["url"], {"topic": "sea"})
            yappi.stop()
        if postgres_url:
            await _pg(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')
    return ours


async def _pg(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--postgres", metavar="URL", help="store in PostgreSQL (a scratch schema) instead of SQLite")
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.concurrency, args.postgres))


if __name__ == "__main__":
    main()
