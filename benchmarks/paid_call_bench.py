"""Paid calls through instant402 against the x402 SDK's own middleware on the same devnet.

Default topology (``--topology processes``), as a deployment runs: every party in its own process.
- the chain: the py-evm devnet with its token, and the SDK facilitator served over HTTP (``/facilitator``);
- the SDK route: a minimal FastAPI ``POST /paid`` behind the SDK's payment middleware, facilitator over HTTP;
- instant402: ``instant402 serve`` (SQLite, or PostgreSQL with ``--postgres``), facilitator over HTTP;
- the OpenRouter emulator;
- this script: the buyers, paying with the SDK's client.
``--topology one-process`` runs the chain, the in-process facilitator and both servers in this process instead
(threads under one GIL: the chain's CPU-bound work then delays every thread hop of the servers).

Reported (not asserted):
- whole paid call median / p95 (sequential) for both routes and their ratio (target <= 1.3x);
- paid calls per second at concurrency 8 (target >= 0.8x the SDK route);
- CPU per paid call of each server process (read from /proc), and in one-process mode where the CPU goes by package
  (yappi self time; instant402's own code separated from its stand-ins).
The SDK route is measured before and after ours (the chain grows as it runs) and compared with the mean.

    .venv/bin/python benchmarks/paid_call_bench.py [--calls 60] [--concurrency 8] [--postgres URL]
        [--topology processes|one-process]

``--capacity N`` measures the adaptive per-creator limit instead, with default creator limits: paid calls at
``--concurrency`` (e.g. 32) against the fast emulator (share of 503 over_capacity refusals), then against a key the
emulator limits to N calls in flight (429 above it) with ``--latency-ms`` per call: where the upstream in-flight
count settles, the share of 429s, and whether the buyers were charged exactly for the answered calls.

    .venv/bin/python benchmarks/paid_call_bench.py --capacity 10 --concurrency 32 --calls 320
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import asyncpg
import httpx
from benchmarks.upstream_overhead import socket_port, start_emulator
from tests.support.emulator import EmulatorHandle

from instant402.payments.buyer import make_buyer_client, pay_url

PRICE = 10_000
SRC = str(Path(__file__).resolve().parents[1] / "src" / "instant402")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def one(client, url: str, body: dict) -> float:
    start = time.perf_counter()
    result = await pay_url(client, url, json=body)
    if result.response.status_code != 200:
        raise RuntimeError(f"{url}: {result.response.status_code} {result.response.text[:300]}")
    return (time.perf_counter() - start) * 1000


async def measure(name: str, clients, url: str, body: dict, calls: int, concurrency: int, pids=None) -> dict:
    """Sequential latency, then throughput at ``concurrency``; ``pids``: processes whose CPU per call to report."""
    for _ in range(3):
        await one(clients[0], url, body)
    pids = pids or {"this process": os.getpid()}
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    seq = [await one(clients[0], url, body) for _ in range(calls)]
    cpu = {n: (cpu_seconds(p) - cpu0[n]) / calls * 1000 for n, p in pids.items()}
    per_worker = max(1, calls // concurrency)

    async def worker(i: int) -> None:
        for _ in range(per_worker):
            await one(clients[i], url, body)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    rate = per_worker * concurrency / (time.perf_counter() - start)
    result = {"median": statistics.median(seq), "p95": pct(seq, 0.95), "rate": rate, "cpu": cpu}
    cpu_text = "  ".join(f"{n} {ms:5.1f}" for n, ms in cpu.items())
    print(
        f"{name:>22}: median {result['median']:6.1f} ms  p95 {result['p95']:6.1f} ms  "
        f"{rate:5.1f} calls/s at {concurrency}  CPU ms/call: {cpu_text}",
        flush=True,
    )
    return result


def report(before: dict, ours: dict, after: dict, concurrency: int) -> None:
    base = {k: (before[k] + after[k]) / 2 for k in ("median", "p95", "rate")}
    print(f"latency ratio (median): {ours['median'] / base['median']:.2f}x   p95: {ours['p95'] / base['p95']:.2f}x")
    print(f"throughput ratio at concurrency {concurrency}: {ours['rate'] / base['rate']:.2f}x")


# -- processes topology ----------------------------------------------------------------------------------------


def serve_chain(port: int, buyers: int) -> None:
    """Child process: the devnet, its JSON-RPC and the SDK facilitator over HTTP; prints what buyers need."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from instant402.devnet import Devnet, build_facilitator, facilitator_app, rpc_app

    devnet = Devnet.start(buyers=buyers)
    facilitator = build_facilitator(devnet)
    app = Starlette(routes=[Mount("/facilitator", facilitator_app(facilitator)), Mount("/", rpc_app(devnet))])
    info = {
        "url": f"http://127.0.0.1:{port}",
        "network": devnet.network,
        "token": devnet.token,
        "asset_name": devnet.asset_name,
        "asset_version": devnet.asset_version,
        "buyers": [b.private_key for b in devnet.buyers],
        "sdk_payee": devnet.new_account(eth_wei=0).address,
        "creator_payout": devnet.new_account(eth_wei=0).address,
    }
    print(json.dumps(info), flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_sdk_route(port: int, chain: dict) -> None:
    """Child process: the minimal route behind the SDK's middleware, paying through the HTTP facilitator."""
    import uvicorn
    from tests.support.x402 import sdk_middleware_app
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient

    facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=chain["url"] + "/facilitator"))
    devnet = SimpleNamespace(network=chain["network"], token=chain["token"], asset_name=chain["asset_name"])
    app = sdk_middleware_app(devnet, facilitator, chain["sdk_payee"], PRICE)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_http(url: str, proc: subprocess.Popen) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def child(*args: str, env: dict | None = None):
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    with socket_port() as port:
        return port


def server_env(data_dir: str, port: int, emulator: EmulatorHandle, chain: dict) -> dict:
    """Environment of an ``instant402`` process paying on the benchmark's chain, calling the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANT402_")}
    return env | {
        "INSTANT402_MODE": "test",
        "INSTANT402_DATA_DIR": data_dir,
        "INSTANT402_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "INSTANT402_LOG_LEVEL": "WARNING",
        "INSTANT402_OPENROUTER_BASE_URL": emulator.base_url,
        "INSTANT402_FACILITATOR_URL": chain["url"] + "/facilitator",
        "INSTANT402_NETWORK": chain["network"],
        "INSTANT402_ASSET_ADDRESS": chain["token"],
        "INSTANT402_ASSET_NAME": chain["asset_name"],
        "INSTANT402_ASSET_VERSION": chain["asset_version"],
        "INSTANT402_RATE_LIMIT_IP_PER_MINUTE": "0",
        "INSTANT402_RATE_LIMIT_PAYER_PER_MINUTE": "0",
    }


def token_balance(chain: dict, address: str) -> int:
    """The token balance of ``address`` on the benchmark's chain (``balanceOf`` over JSON-RPC)."""
    data = "0x70a08231" + address.lower().removeprefix("0x").rjust(64, "0")
    call = {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": chain["token"], "data": data}, "latest"]}
    return int(httpx.post(chain["url"] + "/", json=call, timeout=30).json()["result"], 16)


async def run_processes(calls: int, concurrency: int, postgres_url: str | None) -> None:
    me = str(Path(__file__).resolve())
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    chain_port, sdk_port, our_port = free_port(), free_port(), free_port()
    schema = None
    try:
        with (
            child(sys.executable, me, "--serve-chain", str(chain_port), "--buyers", str(concurrency)) as chain_proc,
            tempfile.TemporaryDirectory() as tmp,
        ):
            chain = json.loads(chain_proc.stdout.readline())
            wait_http(chain["url"] + "/facilitator/supported", chain_proc)
            allow = [{"network": chain["network"], "asset": chain["token"]}]
            clients = [make_buyer_client(k, allow_assets=allow) for k in chain["buyers"]]
            env = server_env(tmp, our_port, emulator, chain) | {"INSTANT402_CREATOR_CONCURRENCY": "64"}
            if postgres_url:
                schema = f"bench_{secrets.token_hex(4)}"
                await _pg(postgres_url, f'CREATE SCHEMA "{schema}"')
                env |= {"INSTANT402_DATABASE_URL": postgres_url, "INSTANT402_DATABASE_SCHEMA": schema}
            subprocess.run([BIN / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
            sync = [BIN / "instant402", "catalog", "sync", "--base-url", emulator.base_url]
            subprocess.run(sync, env=env, check=True, capture_output=True)
            with (
                child(sys.executable, me, "--serve-sdk-route", str(sdk_port), "--chain", json.dumps(chain)) as sdk,
                child(str(BIN / "instant402"), "serve", "--port", str(our_port), env=env) as ours_proc,
            ):
                sdk_url, our_url = f"http://127.0.0.1:{sdk_port}", f"http://127.0.0.1:{our_port}"
                wait_http(sdk_url + "/docs", sdk)
                wait_http(our_url + "/healthz", ours_proc)
                resource_url = publish_resource(our_url, emulator, chain["creator_payout"])
                pids = {"server": 0, "chain": chain_proc.pid, "buyers": os.getpid()}
                body = {"q": "hi"}
                before = await measure(
                    "SDK middleware route",
                    clients,
                    sdk_url + "/paid",
                    body,
                    calls,
                    concurrency,
                    pids | {"server": sdk.pid},
                )
                ours = await measure(
                    "instant402 paid route",
                    clients,
                    resource_url,
                    {"topic": "sea"},
                    calls,
                    concurrency,
                    pids | {"server": ours_proc.pid},
                )
                after = await measure(
                    "SDK middleware (again)",
                    clients,
                    sdk_url + "/paid",
                    body,
                    calls,
                    concurrency,
                    pids | {"server": sdk.pid},
                )
        report(before, ours, after, concurrency)
        extra = ours["cpu"]["server"] - (before["cpu"]["server"] + after["cpu"]["server"]) / 2
        print(f"instant402 server CPU per paid call over the SDK route's server: {extra:.1f} ms")
    finally:
        emulator.close()
        emulator_proc.terminate()
        if schema:
            await _pg(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')


def publish_resource(url: str, emulator: EmulatorHandle, payout: str, key: str | None = None) -> str:
    """A creator with a verified emulator key and a published text resource; returns its paid URL."""
    http = httpx.Client(base_url=url, timeout=30)
    r = http.post(
        "/api/v1/auth/signup",
        json={"username": "bench", "email": "bench@example.com", "password": "correct horse battery"},
    )
    r.raise_for_status()
    token = http.post("/api/v1/me/tokens", json={"name": "b"}, headers={"X-CSRF-Token": r.json()["csrf_token"]})
    http.cookies.clear()
    auth = {"Authorization": f"Bearer {token.json()['token']}"}
    http.patch("/api/v1/me", json={"payout_address": payout}, headers=auth).raise_for_status()
    if key is None:
        key = "sk-or-v1-" + secrets.token_hex(32)
        emulator.add_key(key)
    http.put("/api/v1/me/openrouter-key", json={"key": key}, headers=auth).raise_for_status()
    created = http.post(
        "/api/v1/me/resources",
        headers=auth,
        json={
            "name": "Haiku writer",
            "slug": "haiku",
            "model_id": "openai/gpt-4o-mini",
            "system_prompt": "You are a poet.",
            "prompt_template": "Write a haiku about {{topic}}.",
            "parameters": [{"name": "topic", "type": "string", "required": True, "max_length": 200}],
            "max_tokens": 64,
            "price_atomic": PRICE,
        },
    )
    created.raise_for_status()
    http.post(f"/api/v1/me/resources/{created.json()['id']}/publish", headers=auth).raise_for_status()
    return f"{url}/bench/haiku"


# -- capacity: the adaptive per-creator limit ------------------------------------------------------------------


async def paid_burst(clients, url: str, calls: int, concurrency: int) -> dict:
    """``calls`` paid calls, ``concurrency`` at a time (one buyer each); counts answers by status."""
    statuses: dict[int, int] = defaultdict(int)
    codes: dict[str, int] = defaultdict(int)
    per_worker = max(1, calls // concurrency)

    async def worker(i: int) -> None:
        for n in range(per_worker):
            response = (await pay_url(clients[i], url, json={"topic": f"sea {i} {n}"})).response
            statuses[response.status_code] += 1
            if response.status_code != 200:
                codes[f"{response.status_code} {response.json()['error']['code']}"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    rate = per_worker * concurrency / (time.perf_counter() - start)
    return {"statuses": dict(statuses), "codes": dict(codes), "rate": rate}


async def sample_in_flight(emulator: EmulatorHandle, key: str, samples: list[int], every: float = 0.02) -> None:
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        while True:
            stats = (await http.get("/_emulator/stats", params={"key": key})).json()
            samples.append(stats["in_flight"])
            await asyncio.sleep(every)


async def run_capacity(calls: int, concurrency: int, postgres_url: str | None, key_limit: int, latency_ms: int):
    """Default creator limits, ``concurrency`` paid calls in flight: first against the fast emulator, then against a
    key the emulator limits to ``key_limit`` calls in flight (429 above), each call taking ``latency_ms``."""
    me = str(Path(__file__).resolve())
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    chain_port, our_port = free_port(), free_port()
    schema = None
    try:
        with (
            child(sys.executable, me, "--serve-chain", str(chain_port), "--buyers", str(concurrency)) as chain_proc,
            tempfile.TemporaryDirectory() as tmp,
        ):
            chain = json.loads(chain_proc.stdout.readline())
            wait_http(chain["url"] + "/facilitator/supported", chain_proc)
            allow = [{"network": chain["network"], "asset": chain["token"]}]
            clients = [make_buyer_client(k, allow_assets=allow) for k in chain["buyers"]]
            env = server_env(tmp, our_port, emulator, chain)  # the creator limits stay at their defaults
            if postgres_url:
                schema = f"bench_{secrets.token_hex(4)}"
                await _pg(postgres_url, f'CREATE SCHEMA "{schema}"')
                env |= {"INSTANT402_DATABASE_URL": postgres_url, "INSTANT402_DATABASE_SCHEMA": schema}
            subprocess.run([BIN / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
            sync = [BIN / "instant402", "catalog", "sync", "--base-url", emulator.base_url]
            subprocess.run(sync, env=env, check=True, capture_output=True)
            with child(str(BIN / "instant402"), "serve", "--port", str(our_port), env=env) as ours_proc:
                our_url = f"http://127.0.0.1:{our_port}"
                wait_http(our_url + "/healthz", ours_proc)
                key = "sk-or-v1-" + secrets.token_hex(32)
                emulator.add_key(key)
                url = publish_resource(our_url, emulator, chain["creator_payout"], key)
                await paid_burst(clients, url, concurrency, concurrency)  # warm up

                paid0 = token_balance(chain, chain["creator_payout"])
                fast = await paid_burst(clients, url, calls, concurrency)
                refused = fast["codes"].get("503 over_capacity", 0)
                total = sum(fast["statuses"].values())
                print(
                    f"fast upstream, {concurrency} in flight: {fast['rate']:.1f} paid calls/s, answers "
                    f"{fast['statuses']}, over-capacity refusals {refused / total:.1%}",
                    flush=True,
                )
                paid1 = token_balance(chain, chain["creator_payout"])
                charged_ok = paid1 - paid0 == PRICE * fast["statuses"].get(200, 0)

                emulator.set_concurrency(key, key_limit)
                emulator.fault(kind="latency", latency_ms=latency_ms, key=key)
                emulator.reset()
                samples: list[int] = []
                sampler = asyncio.create_task(sample_in_flight(emulator, key, samples))
                limited = await paid_burst(clients, url, calls, concurrency)
                sampler.cancel()
                stats = emulator.stats(key=key)
                paid2 = token_balance(chain, chain["creator_payout"])
                busy = samples[len(samples) // 5 :] or samples  # after the first fifth: where it settled
                print(
                    f"key limited to {key_limit} in flight, {latency_ms} ms a call, {concurrency} buyers at once: "
                    f"{limited['rate']:.1f} paid calls/s, answers {limited['statuses']} {limited['codes']}",
                    flush=True,
                )
                print(
                    f"  upstream in flight: median {statistics.median(busy):.0f}, mean {statistics.mean(busy):.1f}, "
                    f"max {stats['max_in_flight']}; 429s {stats['throttled']} of {stats['total_calls']} upstream "
                    f"calls ({stats['throttled'] / max(1, stats['total_calls']):.1%})",
                    flush=True,
                )
                charged_ok = charged_ok and paid2 - paid1 == PRICE * limited["statuses"].get(200, 0)
                print(
                    "buyers charged exactly for the answered calls (none for refused or failed ones): "
                    + ("yes" if charged_ok else "NO"),
                    flush=True,
                )
    finally:
        emulator.close()
        emulator_proc.terminate()
        if schema:
            await _pg(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')


# -- one-process topology --------------------------------------------------------------------------------------


async def run_one_process(calls: int, concurrency: int, postgres_url: str | None) -> None:
    import yappi
    from tests.support.market import live_market
    from tests.support.servers import serve_in_thread
    from tests.support.x402 import sdk_middleware_app

    from instant402.catalog.sync import sync_catalog
    from instant402.config import Mode, Settings
    from instant402.db import Database
    from instant402.db.migrate import upgrade
    from instant402.devnet import Devnet, build_facilitator

    devnet = Devnet.start(buyers=concurrency)
    facilitator = build_facilitator(devnet)
    allow = [{"network": devnet.network, "asset": devnet.token}]
    clients = [make_buyer_client(b.private_key, allow_assets=allow) for b in devnet.buyers]
    payee = devnet.new_account(eth_wei=0)
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    schema = None
    try:
        with serve_in_thread(sdk_middleware_app(devnet, facilitator, payee.address, PRICE)) as url:
            before = await measure("SDK middleware route", clients, f"{url}/paid", {"q": "hi"}, calls, concurrency)
            with tempfile.TemporaryDirectory() as tmp:
                base = {"mode": Mode.test, "data_dir": Path(tmp), "log_level": "WARNING", "log_format": "text"}
                if postgres_url:
                    schema = f"bench_{secrets.token_hex(4)}"
                    await _pg(postgres_url, f'CREATE SCHEMA "{schema}"')
                    base |= {"database_url": postgres_url, "database_schema": schema}
                db = Database(Settings(**base))
                await upgrade(db.engine)
                await sync_catalog(db, emulator.base_url)
                await db.dispose()
                with live_market(base, emulator, devnet, facilitator, creator_concurrency=64) as market:
                    res = market.publish(market.seller(), max_tokens=64)
                    body = {"topic": "sea"}
                    ours = await measure("instant402 paid route", clients, res["url"], body, calls, concurrency)
                    yappi.set_clock_type("cpu")
                    yappi.start(builtins=False, profile_threads=True)
                    for _ in range(calls):
                        await one(clients[0], res["url"], body)
                    yappi.stop()
            after = await measure("SDK middleware (again)", clients, f"{url}/paid", {"q": "hi"}, calls, concurrency)
    finally:
        emulator.close()
        emulator_proc.terminate()
        if schema:
            await _pg(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')
    report(before, ours, after, concurrency)
    extra = ours["cpu"]["this process"] - (before["cpu"]["this process"] + after["cpu"]["this process"]) / 2
    print(f"extra process CPU per call over the SDK route: {extra:.1f} ms")
    cpu_by_package(yappi.get_func_stats(), calls)


def cpu_by_package(stats, calls: int) -> None:
    """Self CPU time per call grouped by package, over every thread (yappi), the buyer's included."""
    groups: dict[str, float] = defaultdict(float)
    for stat in stats:
        path = stat.module or ""
        if path.startswith(SRC):
            part = path[len(SRC) + 1 :]
            stand_in = part.startswith(("emulator/", "devnet/"))
            groups["instant402 stand-ins (emulator, devnet)" if stand_in else "instant402 (own code)"] += stat.tsub
        elif "site-packages/" in path:
            groups[path.split("site-packages/")[1].split("/")[0]] += stat.tsub
        else:
            groups["python stdlib / other"] += stat.tsub
    print(f"CPU self time per paid call by package ({calls} sequential calls, all threads, yappi):")
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:16]:
        print(f"  {name:<40} {seconds / calls * 1000:7.2f} ms")


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
    parser.add_argument("--topology", choices=("processes", "one-process"), default="processes")
    parser.add_argument(
        "--capacity",
        type=int,
        metavar="N",
        help="instead: the adaptive creator limit, paid calls at --concurrency against a fast upstream, then a key "
        "limited to N calls in flight",
    )
    parser.add_argument("--latency-ms", type=int, default=200, help="upstream latency in the --capacity run")
    parser.add_argument("--serve-chain", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--buyers", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--serve-sdk-route", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--chain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_chain:
        return serve_chain(args.serve_chain, args.buyers)
    if args.serve_sdk_route:
        return serve_sdk_route(args.serve_sdk_route, json.loads(args.chain))
    if args.capacity:
        return asyncio.run(run_capacity(args.calls, args.concurrency, args.postgres, args.capacity, args.latency_ms))
    run = run_processes if args.topology == "processes" else run_one_process
    asyncio.run(run(args.calls, args.concurrency, args.postgres))


if __name__ == "__main__":
    main()
