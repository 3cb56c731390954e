"""Throughput of 1 and then 2 ``instant402 serve`` processes on one PostgreSQL and one Redis, with a worker.

The deployment of README's "Deployment: several processes": every process gets the same settings (one public URL,
PostgreSQL, Redis, ``INSTANT402_JOB_MODE=worker``) and an ``instant402 worker`` runs beside the servers. The other
parties run in their own processes: the OpenRouter emulator, the devnet chain with its facilitator (from
``paid_call_bench.py``), and this script, which plays the buyers and the creator and spreads requests over the
servers in turn, as a proxy in front of them would. With one server, then two, it reports owner test runs per
second at 32 in flight and paid calls per second at ``--concurrency`` buyers, each server's CPU per call, and the
refusals (none expected with the default creator limits, which are shared through Redis).

    .venv/bin/python benchmarks/multiprocess_bench.py [--postgres URL] [--redis URL] [--calls 640] [--paid-calls 160]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from benchmarks.paid_call_bench import (
    BIN,
    _pg,
    child,
    cpu_seconds,
    free_port,
    publish_resource,
    server_env,
    token_balance,
    wait_http,
)
from benchmarks.test_run_overhead import setup_creator
from benchmarks.upstream_overhead import start_emulator
from tests.support.emulator import EmulatorHandle

from instant402.payments.buyer import make_buyer_client, pay_url

PRICE = 10_000
CHAIN = str(Path(__file__).resolve().parent / "paid_call_bench.py")


async def test_runs(urls: list[str], auth: dict, calls: int, concurrency: int = 32) -> tuple[float, dict]:
    """Owner test runs, ``concurrency`` at a time, spread over ``urls`` in turn."""
    statuses: dict[int, int] = defaultdict(int)
    per_worker = max(1, calls // concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker(i: int) -> None:
            for n in range(per_worker):
                url = urls[(i + n) % len(urls)]
                async with session.post(url, json={"topic": "sea"}, headers=auth) as r:
                    await r.read()
                    statuses[r.status] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return per_worker * concurrency / (time.perf_counter() - start), dict(statuses)


async def paid_calls(clients, urls: list[str], calls: int) -> tuple[float, dict]:
    """Paid calls, one buyer per client at a time, spread over ``urls`` in turn."""
    statuses: dict[int | str, int] = defaultdict(int)
    per_worker = max(1, calls // len(clients))

    async def worker(i: int) -> None:
        for n in range(per_worker):
            response = (await pay_url(clients[i], urls[(i + n) % len(urls)], json={"topic": f"sea {i} {n}"})).response
            status = response.status_code
            statuses[status if status == 200 else f"{status} {_reason(response)}"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(clients))))
    return per_worker * len(clients) / (time.perf_counter() - start), dict(statuses)


def _reason(response) -> str:
    """The error code of a refused call, or the x402 reason of a 402."""
    try:
        body = response.json()
    except ValueError:
        return "?"
    return str(body.get("error", {}).get("code") or body.get("error") or "?")


def cpu_of(pids: list[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


async def flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    async for name in redis.scan_iter(match="instant402:*"):
        await redis.delete(name)
    await redis.aclose()


async def run(postgres_url: str, redis_url: str, calls: int, paid: int, concurrency: int) -> None:
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    schema = f"bench_{secrets.token_hex(4)}"
    await _pg(postgres_url, f'CREATE SCHEMA "{schema}"')
    await flush_redis(redis_url)
    ports = [free_port(), free_port()]
    try:
        with (
            child(sys.executable, CHAIN, "--serve-chain", str(free_port()), "--buyers", str(concurrency)) as chain_proc,
            tempfile.TemporaryDirectory() as tmp,
        ):
            chain = json.loads(chain_proc.stdout.readline())
            wait_http(chain["url"] + "/facilitator/supported", chain_proc)
            allow = [{"network": chain["network"], "asset": chain["token"]}]
            clients = [make_buyer_client(k, allow_assets=allow) for k in chain["buyers"]]
            # One public address for every process (ports[0] stands for the proxy's), everything shared.
            env = server_env(tmp, ports[0], emulator, chain) | {
                "INSTANT402_DATABASE_URL": postgres_url,
                "INSTANT402_DATABASE_SCHEMA": schema,
                "INSTANT402_REDIS_URL": redis_url,
                "INSTANT402_JOB_MODE": "worker",
            }
            subprocess.run([BIN / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
            sync = [BIN / "instant402", "catalog", "sync", "--base-url", emulator.base_url]
            subprocess.run(sync, env=env, check=True, capture_output=True)
            serve = [str(BIN / "instant402"), "serve", "--port"]
            with (
                child(str(BIN / "instant402"), "worker", env=env),
                child(*serve, str(ports[0]), env=env) as first,
                child(*serve, str(ports[1]), env=env) as second,
            ):
                urls = [f"http://127.0.0.1:{p}" for p in ports]
                for url, proc in zip(urls, (first, second), strict=True):
                    wait_http(url + "/readyz", proc)
                key = "sk-or-v1-" + secrets.token_hex(32)
                emulator.add_key(key)
                paid_url = publish_resource(urls[0], emulator, chain["creator_payout"], key)
                auth, test_path = setup_creator(urls[0], key, username="bench2")
                paid_path = paid_url.removeprefix(urls[0])
                await test_runs([u + test_path for u in urls], auth, 64)  # warm up both
                await paid_calls(clients, [u + paid_path for u in urls], len(clients))
                for n in (1, 2):
                    servers = urls[:n]
                    pids = [first.pid, second.pid][:n]
                    cpu0 = cpu_of(pids)
                    rate, statuses = await test_runs([u + test_path for u in servers], auth, calls)
                    cpu = [(b - a) / calls * 1000 for a, b in zip(cpu0, cpu_of(pids), strict=True)]
                    print(
                        f"{n} server(s): owner test runs {rate:6.0f}/s at 32 in flight, answers {statuses}, "
                        f"server CPU ms/call (all servers): {sum(cpu):.2f}",
                        flush=True,
                    )
                    balance0 = token_balance(chain, chain["creator_payout"])
                    cpu0 = cpu_of(pids)
                    rate, statuses = await paid_calls(clients, [u + paid_path for u in servers], paid)
                    cpu = [(b - a) / paid * 1000 for a, b in zip(cpu0, cpu_of(pids), strict=True)]
                    settled = (token_balance(chain, chain["creator_payout"]) - balance0) // PRICE
                    print(
                        f"{n} server(s): paid calls {rate:6.1f}/s at {len(clients)} buyers, answers {statuses}, "
                        f"settled on chain {settled}, server CPU ms/call (all servers): {sum(cpu):.2f}",
                        flush=True,
                    )
    finally:
        emulator.close()
        emulator_proc.terminate()
        await _pg(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')
        await flush_redis(redis_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test", metavar="URL")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11", metavar="URL", help="emptied of instant402:*")
    parser.add_argument("--calls", type=int, default=640, help="owner test runs per measurement")
    parser.add_argument("--paid-calls", type=int, default=160, help="paid calls per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="buyers paying at once")
    args = parser.parse_args()
    asyncio.run(run(args.postgres, args.redis, args.calls, args.paid_calls, args.concurrency))


if __name__ == "__main__":
    main()
