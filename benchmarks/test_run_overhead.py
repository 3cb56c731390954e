"""CPU that instant402 adds to an owner test run over calling the upstream directly (budget: <= 3 ms per call).

Three processes: the OpenRouter emulator, the instant402 server (``instant402 serve`` on SQLite), and this script.
The script first calls the emulator directly with the openai SDK (the CPU a caller would spend anyway), then asks
the server for owner test runs of a published resource; the server's own CPU per test run is read from
/proc/<pid>/stat before and after. Added CPU = server CPU per run - direct SDK client CPU per call. A test run does
everything a paid call does except the payment: auth, resource lookup, input validation, key decryption (and its
audit count), the upstream call, and the usage row. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/test_run_overhead.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import AsyncOpenAI, DefaultAioHttpClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.upstream_overhead import start_emulator

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def direct(base_url: str, key: str, calls: int) -> tuple[float, float]:
    client = AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, http_client=DefaultAioHttpClient())
    messages = [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write a haiku about sea."},
    ]
    for _ in range(20):
        await client.chat.completions.create(model="openai/gpt-4o-mini", messages=messages, max_tokens=64)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await client.chat.completions.create(model="openai/gpt-4o-mini", messages=messages, max_tokens=64)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await client.close()
    return cpu / calls * 1000, wall / calls * 1000


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    emulator, emulator_url = start_emulator()
    key = "sk-or-v1-" + secrets.token_hex(32)
    httpx.post(f"{emulator_url}/_emulator/keys", json={"key": key}).raise_for_status()
    base_url = f"{emulator_url}/api/v1"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANT402_")}
        env.update(
            {
                "INSTANT402_MODE": "test",
                "INSTANT402_DATA_DIR": tmp,
                "INSTANT402_OPENROUTER_BASE_URL": base_url,
                "INSTANT402_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "INSTANT402_LOG_LEVEL": "WARNING",
                "INSTANT402_RATE_LIMIT_IP_PER_MINUTE": "0",
            }
        )
        bin_dir = Path(sys.executable).parent
        subprocess.run([bin_dir / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
        subprocess.run(
            [bin_dir / "instant402", "catalog", "sync", "--base-url", base_url],
            env=env,
            check=True,
            capture_output=True,
        )
        server = subprocess.Popen(
            [bin_dir / "instant402", "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            http = httpx.Client(base_url=url, timeout=30)
            r = http.post(
                "/api/v1/auth/signup",
                json={"username": "bench", "email": "bench@example.com", "password": "correct horse battery"},
            )
            csrf = r.json()["csrf_token"]
            token = http.post("/api/v1/me/tokens", json={"name": "b"}, headers={"X-CSRF-Token": csrf}).json()["token"]
            http.cookies.clear()
            auth = {"Authorization": f"Bearer {token}"}
            http.put("/api/v1/me/openrouter-key", json={"key": key}, headers=auth).raise_for_status()
            resource = http.post(
                "/api/v1/me/resources",
                headers=auth,
                json={
                    "name": "Bench haiku",
                    "model_id": "openai/gpt-4o-mini",
                    "system_prompt": "You are a poet.",
                    "prompt_template": "Write a haiku about {{topic}}.",
                    "parameters": [{"name": "topic", "type": "string", "required": True}],
                    "max_tokens": 64,
                    "price_atomic": 10_000,
                },
            ).json()
            path = f"/api/v1/me/resources/{resource['id']}/test"
            for _ in range(20):
                http.post(path, json={"topic": "sea"}, headers=auth).raise_for_status()
            # Rounds alternate the server and the direct client, so a noisy moment hits both; medians are reported.
            runs, directs, latencies = [], [], []
            for _ in range(args.rounds):
                cpu0 = cpu_seconds(server.pid)
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    http.post(path, json={"topic": "sea"}, headers=auth).raise_for_status()
                    latencies.append((time.perf_counter() - t0) * 1000)
                runs.append((cpu_seconds(server.pid) - cpu0) / args.calls * 1000)
                directs.append(asyncio.run(direct(base_url, key, args.calls))[0])
            reference = {}
            for name, method, url_path in (
                ("GET /healthz", "GET", "/healthz"),
                ("GET /api/v1/me (auth)", "GET", "/api/v1/me"),
            ):
                cpu0 = cpu_seconds(server.pid)
                for _ in range(args.calls):
                    http.request(method, url_path, headers=auth).raise_for_status()
                reference[name] = (cpu_seconds(server.pid) - cpu0) / args.calls * 1000
            for name, ms in reference.items():
                print(f"reference: {name}: server CPU {ms:.2f} ms/request")
            server_cpu, direct_cpu = statistics.median(runs), statistics.median(directs)
            print(
                f"direct openai SDK call to the emulator: client CPU {direct_cpu:.2f} ms/call (rounds: {_fmt(directs)})"
            )
            print(
                f"owner test run through instant402: server CPU {server_cpu:.2f} ms/call ({_fmt(runs)}), "
                f"latency p50 {statistics.median(latencies):.2f} ms (client to server, sequential)"
            )
            added = [r - d for r, d in zip(runs, directs, strict=True)]
            median = statistics.median(added)
            print(f"CPU added by instant402 per call: {median:.2f} ms (rounds: {_fmt(added)}; budget 3 ms)")
            print("(server CPU includes uvicorn's HTTP handling, auth, SQLite, the usage row and key audit count)")
        finally:
            server.terminate()
            server.wait(timeout=10)
            emulator.terminate()


if __name__ == "__main__":
    main()
