"""Streamed paid calls: the server's added time to first byte and to first token over the emulator's own.

Every party in its own process, as a deployment runs: the devnet chain with the SDK facilitator over HTTP, the
OpenRouter emulator (pacing its stream: ``--chunk-ms`` before each content chunk), ``instant402 serve`` (SQLite), and
this script as the buyers. For each of 1 and 32 streams in flight it measures, from the moment the request is sent:

- the emulator's own stream (``POST /chat/completions`` with ``stream: true``, a key of its own): time to its first
  byte (response headers) and to its first content chunk;
- the paid stream through instant402 (``Accept: text/event-stream`` with a payment signed beforehand by the SDK
  client): time to the response headers and to the first text event. The paid stream's response starts with its first
  text (an upstream failure before it is a JSON error with its status), so the two are close.

The added time is the paid stream's median (and p95) minus the emulator's: verifying the payment with the facilitator,
claiming it in the database, opening the creator's key and the extra hop. The facilitator's share (its median verify
time, read from the server's usage rows) is printed beside it: here it is the devnet's in-process EVM simulating each
transfer, one process for every buyer. Reported, not asserted.

    .venv/bin/python benchmarks/stream_bench.py [--streams 40] [--chunk-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support and benchmarks

import httpx
from benchmarks.paid_call_bench import BIN, child, cpu_seconds, free_port, pct, publish_resource, wait_http
from benchmarks.upstream_overhead import start_emulator
from tests.support.emulator import EmulatorHandle
from x402.http import x402HTTPClient

from instant402.payments.buyer import EVENT_STREAM, make_buyer_client, read_payment_required

LEVELS = (1, 32)


async def timed_stream(http: httpx.AsyncClient, url: str, body: dict, headers: dict, text_marker: bytes):
    """(ms to the response headers, ms to the first line holding ``text_marker``) of one streamed request."""
    start = time.perf_counter()
    async with http.stream("POST", url, json=body, headers=headers) as response:
        first_byte = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {(await response.aread())[:300]!r}")
        first_token = None
        async for line in response.aiter_lines():
            if first_token is None and text_marker in line.encode():
                first_token = (time.perf_counter() - start) * 1000
    return first_byte, first_token


async def emulator_round(http, emulator: EmulatorHandle, key: str, n: int):
    body = {
        "model": "openai/gpt-4o-mini",
        "stream": True,
        "max_tokens": 64,
        "messages": [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "A haiku: sea"}],
    }
    headers = {"Authorization": f"Bearer {key}"}
    url = emulator.base_url + "/chat/completions"
    return await asyncio.gather(*(timed_stream(http, url, body, headers, b'"content":"You') for _ in range(n)))


async def paid_round(http, clients, url: str, n: int):
    body = {"topic": "sea"}
    first = await http.post(url, json=body, headers={"Accept": EVENT_STREAM})
    required = read_payment_required(first)
    signed = []
    for client in clients[:n]:  # signed before the clock starts: the buyer's side, not the server's
        payload = await client.create_payment_payload(required)
        signed.append({**x402HTTPClient(client).encode_payment_signature_header(payload), "Accept": EVENT_STREAM})
    return await asyncio.gather(*(timed_stream(http, url, body, h, b'data: {"text"') for h in signed))


def summary(samples: list[tuple[float, float]]) -> dict:
    fb, ft = [s[0] for s in samples], [s[1] for s in samples]
    return {"fb": statistics.median(fb), "fb95": pct(fb, 0.95), "ft": statistics.median(ft), "ft95": pct(ft, 0.95)}


async def run(streams: int, chunk_ms: int) -> None:
    me_chain = str(Path(__file__).resolve().parent / "paid_call_bench.py")
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    chain_port, our_port = free_port(), free_port()
    try:
        with (
            child(sys.executable, me_chain, "--serve-chain", str(chain_port), "--buyers", str(max(LEVELS))) as chain_p,
            tempfile.TemporaryDirectory() as tmp,
        ):
            chain = json.loads(chain_p.stdout.readline())
            wait_http(chain["url"] + "/facilitator/supported", chain_p)
            allow = [{"network": chain["network"], "asset": chain["token"]}]
            clients = [make_buyer_client(k, allow_assets=allow) for k in chain["buyers"]]
            env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANT402_")}
            env |= {
                "INSTANT402_MODE": "test",
                "INSTANT402_DATA_DIR": tmp,
                "INSTANT402_PUBLIC_URL": f"http://127.0.0.1:{our_port}",
                "INSTANT402_LOG_LEVEL": "WARNING",
                "INSTANT402_OPENROUTER_BASE_URL": emulator.base_url,
                "INSTANT402_FACILITATOR_URL": chain["url"] + "/facilitator",
                "INSTANT402_NETWORK": chain["network"],
                "INSTANT402_ASSET_ADDRESS": chain["token"],
                "INSTANT402_ASSET_NAME": chain["asset_name"],
                "INSTANT402_ASSET_VERSION": chain["asset_version"],
                "INSTANT402_RATE_LIMIT_IP_PER_MINUTE": "0",
                "INSTANT402_RATE_LIMIT_PAYER_PER_MINUTE": "0",
                "INSTANT402_CREATOR_CONCURRENCY": "64",
            }
            subprocess.run([BIN / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
            sync = [BIN / "instant402", "catalog", "sync", "--base-url", emulator.base_url]
            subprocess.run(sync, env=env, check=True, capture_output=True)
            with child(str(BIN / "instant402"), "serve", "--port", str(our_port), env=env) as ours:
                our_url = f"http://127.0.0.1:{our_port}"
                wait_http(our_url + "/healthz", ours)
                resource_url = publish_resource(our_url, emulator, chain["creator_payout"])
                key = "sk-or-v1-" + secrets.token_hex(32)  # the direct calls' own key, unlimited like the creator's
                emulator.add_key(key)
                emulator.fault(kind="pace", chunk_ms=chunk_ms)
                limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
                async with httpx.AsyncClient(timeout=120, limits=limits) as http:
                    await paid_round(http, clients, resource_url, 2)  # warm up both paths
                    await emulator_round(http, emulator, key, 2)
                    print(f"emulator pace: {chunk_ms} ms before each content chunk; {streams} streams per level")
                    for level in LEVELS:
                        rounds = max(1, streams // level)
                        direct, paid, cpu = [], [], 0.0
                        for _ in range(rounds):
                            direct += await emulator_round(http, emulator, key, level)
                            cpu0 = cpu_seconds(ours.pid)
                            paid += await paid_round(http, clients, resource_url, level)
                            await _settled(Path(tmp) / "instant402.db")  # each round starts on a quiet server
                            cpu += cpu_seconds(ours.pid) - cpu0
                        e, s = summary(direct), summary(paid)
                        verify, server_ft = _row_timings(Path(tmp) / "instant402.db", len(paid))
                        print(
                            f"{level:>2} in flight | emulator: first byte {e['fb']:6.1f} ms, first token "
                            f"{e['ft']:6.1f} ms | instant402: first byte {s['fb']:6.1f} ms, first token "
                            f"{s['ft']:6.1f} ms | added: first byte {s['fb'] - e['fb']:6.1f} ms "
                            f"(p95 {s['fb95'] - e['fb95']:6.1f}), first token {s['ft'] - e['ft']:6.1f} ms "
                            f"(p95 {s['ft95'] - e['ft95']:6.1f}) | server-measured first token {server_ft:6.1f} ms, "
                            f"of which facilitator verify {verify:6.1f} ms (medians) | server CPU per paid stream "
                            f"{cpu / len(paid) * 1000:5.1f} ms (402 probe and settlement included)",
                            flush=True,
                        )
    finally:
        emulator.close()
        emulator_proc.terminate()


def _row_timings(db: Path, last: int) -> tuple[float, float]:
    """Median facilitator verify time and server-measured time to first token of the last ``last`` streamed calls,
    from the server's usage rows."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT verify_ms, first_token_ms FROM usage_records WHERE streamed ORDER BY id DESC LIMIT ?", (last,)
        ).fetchall()
    return statistics.median(r[0] or 0 for r in rows), statistics.median(r[1] or 0 for r in rows)


async def _settled(db: Path) -> None:
    """Wait until no call is running any more (the round's settlements landed)."""
    for _ in range(600):
        with sqlite3.connect(db) as conn:
            if not conn.execute("SELECT count(*) FROM usage_records WHERE status = 'running'").fetchone()[0]:
                return
        await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64, help="streams measured per level (default 64)")
    parser.add_argument("--chunk-ms", type=int, default=20, help="emulator pace before each chunk (default 20)")
    args = parser.parse_args()
    asyncio.run(run(args.streams, args.chunk_ms))


if __name__ == "__main__":
    main()
