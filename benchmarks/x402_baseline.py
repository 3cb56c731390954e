"""Baseline for paid calls: a minimal route behind the x402 SDK's OWN FastAPI middleware on the devnet.

Setup (so our paid route can be compared like for like):
- chain: the in-process devnet (py-evm), token and funded buyers from ``Devnet.start``;
- facilitator: the SDK facilitator in process (``LocalFacilitator``), or over loopback HTTP with ``--http-facilitator``;
- server: uvicorn on loopback in a background thread of this process (same process as the chain);
- buyer: the SDK client (``x402HttpxClient``, eth-account signer), one buyer key per concurrent worker.

A "whole paid call" is: POST → 402 → sign → POST with PAYMENT-SIGNATURE → verify → handler → settle → 200.
Numbers are printed, not asserted.  Run: ``.venv/bin/python benchmarks/x402_baseline.py [--calls 40]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from tests.support.servers import serve_in_thread
from tests.support.x402 import sdk_middleware_app
from x402.http import FacilitatorConfig, HTTPFacilitatorClient

from instant402.devnet import Devnet, build_facilitator, facilitator_app
from instant402.payments.buyer import make_buyer_client, pay_url

PRICE = 10_000  # 0.01 USDC


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _one(client, url: str) -> float:
    start = time.perf_counter()
    result = await pay_url(client, url, json={"q": "hi"})
    elapsed = time.perf_counter() - start
    if result.response.status_code != 200 or not (result.receipt and result.receipt.success):
        raise RuntimeError(f"paid call failed: {result.response.status_code} {result.response.text[:200]}")
    return elapsed


async def run(calls: int, concurrency: int, http_facilitator: bool) -> None:
    devnet = Devnet.start(buyers=concurrency)
    local = build_facilitator(devnet)
    payee = devnet.new_account(eth_wei=0)
    clients = [
        make_buyer_client(b.private_key, allow_assets=[{"network": devnet.network, "asset": devnet.token}])
        for b in devnet.buyers
    ]

    def serve_route(facilitator):
        return serve_in_thread(sdk_middleware_app(devnet, facilitator, payee.address, PRICE))

    async def measure(url: str) -> None:
        for _ in range(3):  # warm-up
            await _one(clients[0], url)
        cpu_start = time.process_time()
        sequential = [await _one(clients[0], url) for _ in range(calls)]
        cpu_per_call = (time.process_time() - cpu_start) / calls * 1000
        per_worker = max(1, calls // concurrency)

        async def worker(i: int) -> None:
            for _ in range(per_worker):
                await _one(clients[i], url)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - start
        ms = [t * 1000 for t in sequential]
        print(f"  sequential paid call: median {statistics.median(ms):.1f} ms, p95 {_pct(ms, 0.95):.1f} ms (n={calls})")
        # Whole-process CPU (buyer, server, facilitator, chain): robust to other load on the machine.
        print(f"  CPU per sequential paid call (all parts, one process): {cpu_per_call:.1f} ms")
        print(f"  concurrency {concurrency}: {per_worker * concurrency / wall:.1f} paid calls/s")

    before = devnet.balance_of(payee.address)
    if http_facilitator:
        print("SDK middleware route, facilitator over loopback HTTP:")
        with serve_in_thread(facilitator_app(local)) as facilitator_url:
            facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url))
            with serve_route(facilitator) as url:
                await measure(f"{url}/paid")
    else:
        print("SDK middleware route, facilitator in process:")
        with serve_route(local) as url:
            await measure(f"{url}/paid")
    settled = (devnet.balance_of(payee.address) - before) // PRICE
    print(f"  settled on chain: {settled} payments of {PRICE} atomic units")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--http-facilitator", action="store_true", help="serve the facilitator over loopback HTTP")
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.concurrency, args.http_facilitator))


if __name__ == "__main__":
    main()
