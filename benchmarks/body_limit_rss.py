"""Server memory under oversized request bodies: 8 concurrent 100 MB POSTs to the paid route of a published resource.

Starts the emulator and ``instant402 serve`` (SQLite, its own data dir), publishes a resource, then sends the bodies
twice: with a declared Content-Length, and chunked (no length). Reports the server's RSS before, its peak (VmHWM)
after each round, and the answers' statuses. Not asserted: compare before/after a change.

    .venv/bin/python benchmarks/body_limit_rss.py [--concurrency 8] [--mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

import httpx
from benchmarks.paid_call_bench import BIN, child, free_port, publish_resource, wait_http
from benchmarks.upstream_overhead import start_emulator
from tests.support.emulator import EmulatorHandle

CHUNK = 1024 * 1024
PAYOUT = "0x" + "11" * 20


def memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


async def chunks(total: int):
    sent = 0
    block = b" " * CHUNK
    while sent < total:
        sent += CHUNK
        yield block


async def one(http: httpx.AsyncClient, url: str, total: int, declared: bool) -> str:
    headers = {"Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(total)
    try:
        r = await http.post(url, content=chunks(total), headers=headers)
        return str(r.status_code)
    except httpx.HTTPError as exc:  # the server may close the connection once it has answered
        return type(exc).__name__


async def rounds(url: str, pid: int, concurrency: int, total: int) -> None:
    rest = memory_mb(pid)
    print(f"server RSS at rest: {rest['VmRSS']:.0f} MB (peak so far {rest['VmHWM']:.0f} MB)")
    async with httpx.AsyncClient(timeout=300) as http:
        for declared in (True, False):
            answers = await asyncio.gather(*(one(http, url, total, declared) for _ in range(concurrency)))
            mem = memory_mb(pid)
            what = "declared Content-Length" if declared else "chunked, no length"
            print(
                f"{concurrency} x {total // CHUNK} MB ({what}): answers {dict(Counter(answers))}, "
                f"server RSS now {mem['VmRSS']:.0f} MB, peak so far {mem['VmHWM']:.0f} MB"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    emulator_proc, emulator_url = start_emulator()
    emulator = EmulatorHandle(emulator_url)
    port = free_port()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANT402_")}
            env |= {
                "INSTANT402_MODE": "test",
                "INSTANT402_DATA_DIR": tmp,
                "INSTANT402_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "INSTANT402_LOG_LEVEL": "WARNING",
                "INSTANT402_OPENROUTER_BASE_URL": emulator.base_url,
                "INSTANT402_RATE_LIMIT_IP_PER_MINUTE": "0",
            }
            subprocess.run([BIN / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
            sync = [BIN / "instant402", "catalog", "sync", "--base-url", emulator.base_url]
            subprocess.run(sync, env=env, check=True, capture_output=True)
            with child(str(BIN / "instant402"), "serve", "--port", str(port), env=env) as server:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/healthz", server)
                paid_url = publish_resource(url, emulator, PAYOUT)
                asyncio.run(rounds(paid_url, server.pid, args.concurrency, args.mb * CHUNK))
    finally:
        emulator.close()
        emulator_proc.terminate()


if __name__ == "__main__":
    main()
