"""What Upstream.complete adds over calling the upstream directly: CPU time and latency per call.

Starts the OpenRouter emulator in its own process (so its CPU is not counted), then runs the same chat completion
N times with a raw aiohttp client and N times through ``Upstream.complete`` (text output, no faults), sequentially
and at a fixed concurrency. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/upstream_overhead.py [--calls 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from instant402.config import Settings
from instant402.execution.upstream import CompletionRequest, Upstream

MODEL = "openai/gpt-5-mini"
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three fjords."}]


def start_emulator() -> tuple[subprocess.Popen, str]:
    with socket_port() as port:
        pass
    code = (
        f"from instant402.emulator.app import run_emulator; run_emulator(host='127.0.0.1', port={port}, control=True)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/api/v1/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("emulator did not start")


class socket_port:
    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.s.close()


async def measure(name: str, one, calls: int, concurrency: int) -> dict:
    for _ in range(50):  # warm up connections and caches
        await one()
    latencies = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        await one()
        latencies.append((time.perf_counter() - t) * 1000)
    cpu_seq = (time.process_time() - cpu0) / calls * 1000
    wall_seq = time.perf_counter() - wall0

    sem = asyncio.Semaphore(concurrency)

    async def guarded():
        async with sem:
            await one()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(guarded() for _ in range(calls)))
    wall_conc = time.perf_counter() - wall0
    cpu_conc = (time.process_time() - cpu0) / calls * 1000
    latencies.sort()
    return {
        "name": name,
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1],
        "cpu_ms_per_call_seq": cpu_seq,
        "cpu_ms_per_call_conc": cpu_conc,
        "seq_rps": calls / wall_seq,
        "conc_rps": calls / wall_conc,
    }


async def run(calls: int, concurrency: int, url: str, key: str) -> None:
    endpoint = f"{url}/api/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def raw():
            body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
            async with session.post(endpoint, data=body, headers=headers) as r:
                data = json.loads(await r.read())
                assert data["choices"][0]["message"]["content"]

        direct = await measure("raw aiohttp", raw, calls, concurrency)

    with tempfile.TemporaryDirectory() as tmp:
        upstream = Upstream(Settings(openrouter_base_url=f"{url}/api/v1", data_dir=Path(tmp)))
        request = CompletionRequest(model=MODEL, messages=MESSAGES)

        async def through():
            done = await upstream.complete(request, key, time.time() + 60)
            assert done.output["text"]

        ours = await measure("Upstream.complete", through, calls, concurrency)
        await upstream.aclose()

    print(f"{calls} calls, concurrency {concurrency} for the throughput columns")
    cols = ("p50_ms", "p95_ms", "cpu_ms_per_call_seq", "cpu_ms_per_call_conc", "seq_rps", "conc_rps")
    print(f"{'':20}" + "".join(f"{c:>22}" for c in cols))
    for row in (direct, ours):
        print(f"{row['name']:20}" + "".join(f"{row[c]:>22.3f}" for c in cols))
    print(
        f"added: latency p50 {ours['p50_ms'] - direct['p50_ms']:+.3f} ms, "
        f"CPU {ours['cpu_ms_per_call_seq'] - direct['cpu_ms_per_call_seq']:+.3f} ms/call sequential, "
        f"{ours['cpu_ms_per_call_conc'] - direct['cpu_ms_per_call_conc']:+.3f} ms/call concurrent"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    proc, url = start_emulator()
    try:
        key = f"sk-or-v1-{secrets.token_hex(24)}"
        httpx.post(f"{url}/_emulator/keys", json={"key": key}).raise_for_status()
        asyncio.run(run(args.calls, args.concurrency, url, key))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
