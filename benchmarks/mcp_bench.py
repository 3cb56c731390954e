"""MCP tool calls against the HTTP paid route, on the same server, devnet and emulator.

One process: the devnet chain with the SDK facilitator in process, the marketplace under uvicorn (SQLite), the
OpenRouter emulator, and the buyers here (the SDK's x402 client; for MCP the official ``mcp`` client with the SDK's
``x402MCPClient``, one session kept open as an agent would; for HTTP the SDK's paying httpx client, kept open too).

Reported (not asserted), each sequential:
- the unpaid answer: HTTP 402 vs the MCP payment-required result (the door's own cost, no chain);
- the whole paid call (quote, sign, verify, run, settle): HTTP vs MCP, median / p95 and the difference.
The two doors alternate in rounds so the growing chain weighs on both alike.

    .venv/bin/python benchmarks/mcp_bench.py [--calls 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import httpx
from mcp import Client
from tests.support.emulator import running_emulator
from tests.support.market import live_market
from x402.http.clients import x402HttpxClient
from x402.mcp import x402MCPClient

from instant402.config import Mode, Settings
from instant402.db import Database
from instant402.db.migrate import upgrade
from instant402.devnet import Devnet, build_facilitator
from instant402.payments.buyer import McpToolCaller, make_buyer_client


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f} ms   p95 {pct(values, 0.95):7.1f} ms"


async def timed(coro) -> float:
    start = time.perf_counter()
    await coro
    return (time.perf_counter() - start) * 1000


async def main(calls: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    base = {
        "mode": Mode.test,
        "data_dir": data_dir,
        "public_url": "http://testserver",
        "log_format": "text",
        "database_url": f"sqlite+aiosqlite:///{data_dir}/bench.db",
    }
    db = Database(Settings(**base))
    await upgrade(db.engine)
    await db.dispose()
    devnet = Devnet.start(data_dir=data_dir, buyers=1, buyer_balance=10**12)
    facilitator = build_facilitator(devnet)
    with running_emulator() as emulator, live_market(base, emulator, devnet, facilitator) as market:
        from instant402.catalog.sync import sync_catalog

        database = Database(market.settings)
        await sync_catalog(database, emulator.base_url)
        await database.dispose()
        seller = market.seller()
        res = market.publish(seller)
        tool = f"{seller.username}__{res['path'].rsplit('/', 1)[1]}"
        buyer = make_buyer_client(devnet.buyers[0].private_key, allow_assets=market.allow_assets)
        body = {"topic": "rain"}
        unpaid = {"http": [], "mcp": []}
        paid = {"http": [], "mcp": []}
        async with (
            httpx.AsyncClient(timeout=60) as http,
            x402HttpxClient(buyer, timeout=60) as paying,  # the SDK's paying transport, kept open like the session
            Client(f"{market.url}/mcp") as session,
        ):
            mcp = x402MCPClient(McpToolCaller(session), buyer, auto_payment=True)

            async def http_paid():
                r = await paying.post(res["url"], json=body)
                assert r.status_code == 200, r.text

            async def mcp_paid():
                r = await mcp.call_tool(tool, body)
                assert not r.is_error and r.payment_response.success, r.content

            async def http_unpaid():
                assert (await http.post(res["url"], json=body)).status_code == 402

            async def mcp_unpaid():
                assert (await session.call_tool(tool, body)).is_error

            for _ in range(3):  # warm both doors
                await http_paid()
                await mcp_paid()
            for _ in range(calls):
                unpaid["http"].append(await timed(http_unpaid()))
                unpaid["mcp"].append(await timed(mcp_unpaid()))
                paid["http"].append(await timed(http_paid()))
                paid["mcp"].append(await timed(mcp_paid()))
    print(f"{calls} calls each, sequential, one process (devnet + SDK facilitator in process, SQLite)")
    for name, results in (("unpaid answer (402)", unpaid), ("whole paid call", paid)):
        print(f"{name}:")
        print(f"  HTTP route  {summary(results['http'])}")
        print(f"  MCP tool    {summary(results['mcp'])}")
        diff = statistics.median(results["mcp"]) - statistics.median(results["http"])
        ratio = statistics.median(results["mcp"]) / statistics.median(results["http"])
        print(f"  MCP overhead: {diff:+.1f} ms per call ({ratio:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    asyncio.run(main(parser.parse_args().calls))
