"""CPU that instant402 adds to an owner test run over calling the upstream directly (budget: <= 3 ms per call).

Three processes: the OpenRouter emulator, the instant402 server (``instant402 serve`` on SQLite), and this script.
The script first calls the emulator directly with the openai SDK (the CPU a caller would spend anyway), then asks
the server for owner test runs of a published resource; the server's own CPU per test run is read from
/proc/<pid>/stat before and after. Added CPU = server CPU per run - direct SDK client CPU per call. A test run does
everything a paid call does except the payment: auth, resource lookup, input validation, key decryption (and its
audit count), the upstream call, and the usage row. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/test_run_overhead.py [--calls 300] [--rounds 5]

``--side-by-side`` instead runs every target against the same upstream (the emulator, in its own process) in one
run and prints, per target: added p50 latency at 1 in flight (over calling the emulator directly), server CPU per
call at 32 in flight (from /proc), requests per second at 32 in flight, and the share of refused calls. Targets: a
minimal aiohttp proxy (the floor), instant402 owner test runs on SQLite and (with ``--postgres URL``) PostgreSQL with
default creator limits, and a LiteLLM proxy when ``--litellm BIN`` names its ``litellm`` command (skipped otherwise).

    .venv/bin/python benchmarks/test_run_overhead.py --side-by-side [--postgres URL] [--litellm BIN]
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


def setup_creator(url: str, key: str, username: str = "bench") -> tuple[dict, str]:
    """A creator with ``key`` saved and a draft text resource; returns the auth header and its test-run path."""
    http = httpx.Client(base_url=url, timeout=30)
    r = http.post(
        "/api/v1/auth/signup",
        json={"username": username, "email": f"{username}@example.com", "password": "correct horse battery"},
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
    http.close()
    return auth, f"/api/v1/me/resources/{resource['id']}/test"


def wait_ready(url: str, proc: subprocess.Popen, path: str = "/readyz") -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.get(url + path, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# -- side by side ------------------------------------------------------------------------------------------------

CHAT = {
    "model": "openai/gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write a haiku about sea."},
    ],
    "max_tokens": 64,
}


def serve_proxy(port: int, upstream: str) -> None:
    """Child process: the floor, a minimal aiohttp proxy forwarding chat completions over one shared session."""
    from aiohttp import ClientSession, web

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Authorization": request.headers["Authorization"], "Content-Type": "application/json"}
        async with request.app["session"].post(upstream + "/chat/completions", data=body, headers=headers) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    async def session(app: web.Application):
        app["session"] = ClientSession()
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/healthz", lambda request: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def load(url: str, body: dict, headers: dict, calls: int, concurrency: int) -> tuple[list[float], float, dict]:
    """``calls`` POSTs, ``concurrency`` at a time: latencies (ms), requests per second, counts by status."""
    import aiohttp

    statuses: dict[int, int] = {}
    latencies: list[float] = []
    per_worker = max(1, calls // concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            for _ in range(per_worker):
                t0 = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = per_worker * concurrency / (time.perf_counter() - start)
    return latencies, rate, statuses


async def measure_target(name: str, url: str, body: dict, headers: dict, pid: int | None, calls: int) -> dict:
    await load(url, body, headers, 50, 1)  # warm up
    await load(url, body, headers, 200, 32)
    seq, _, _ = await load(url, body, headers, calls // 2, 1)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    _, rate, statuses = await load(url, body, headers, calls, 32)
    cpu = (cpu_seconds(pid) - cpu0) / calls * 1000 if pid else float("nan")
    refused = sum(n for status, n in statuses.items() if status != 200) / max(1, sum(statuses.values()))
    return {"name": name, "p50": statistics.median(seq), "cpu": cpu, "rate": rate, "refused": refused}


def instant402_env(tmp: str, port: int, base_url: str, postgres_url: str | None, schema: str | None) -> dict:
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
    if postgres_url:
        env |= {"INSTANT402_DATABASE_URL": postgres_url, "INSTANT402_DATABASE_SCHEMA": schema}
    return env


def side_by_side(calls: int, postgres_url: str | None, litellm: str | None) -> None:
    from benchmarks.paid_call_bench import _pg

    emulator, emulator_url = start_emulator()
    key = "sk-or-v1-" + secrets.token_hex(32)
    httpx.post(f"{emulator_url}/_emulator/keys", json={"key": key}).raise_for_status()
    base_url = f"{emulator_url}/api/v1"
    bearer = {"Authorization": f"Bearer {key}"}
    me = str(Path(__file__).resolve())
    bin_dir = Path(sys.executable).parent
    results = []
    procs: list[subprocess.Popen] = []
    schema = f"bench_{secrets.token_hex(4)}" if postgres_url else None
    try:
        direct_ms = asyncio.run(measure_target("direct", base_url + "/chat/completions", CHAT, bearer, None, calls))
        print(
            f"straight to the emulator: p50 {direct_ms['p50']:.2f} ms, {direct_ms['rate']:.0f} req/s at 32", flush=True
        )

        port = free_port()
        proxy = subprocess.Popen([sys.executable, me, "--serve-proxy", str(port), "--upstream", base_url])
        procs.append(proxy)
        wait_ready(f"http://127.0.0.1:{port}", proxy, "/healthz")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        results.append(asyncio.run(measure_target("minimal aiohttp proxy", url, CHAT, bearer, proxy.pid, calls)))

        if litellm:
            port = free_port()
            master = "sk-" + secrets.token_hex(16)  # LiteLLM refuses to start without one
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
                config.write(
                    "model_list:\n  - model_name: openai/gpt-4o-mini\n    litellm_params:\n"
                    f"      model: openai/openai/gpt-4o-mini\n      api_base: {base_url}\n      api_key: {key}\n"
                    f"general_settings:\n  master_key: {master}\n"
                )
            proc = subprocess.Popen(
                [litellm, "--config", config.name, "--port", str(port), "--num_workers", "1"],
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # its own environment
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}", proc, "/health/liveliness")
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            litellm_auth = {"Authorization": f"Bearer {master}"}
            name = "LiteLLM proxy, 1 worker"
            results.append(asyncio.run(measure_target(name, url, CHAT, litellm_auth, proc.pid, calls)))
            proc.terminate()
            os.unlink(config.name)
        else:
            print("LiteLLM: skipped (pass --litellm with the path of its `litellm` command)", flush=True)

        stores = [("SQLite", None)] + ([("PostgreSQL", postgres_url)] if postgres_url else [])
        for store, db_url in stores:
            with tempfile.TemporaryDirectory() as tmp:
                port = free_port()
                if db_url:
                    asyncio.run(_pg(db_url, f'CREATE SCHEMA "{schema}"'))
                env = instant402_env(tmp, port, base_url, db_url, schema)
                subprocess.run([bin_dir / "instant402", "db", "upgrade"], env=env, check=True, capture_output=True)
                sync = [bin_dir / "instant402", "catalog", "sync", "--base-url", base_url]
                subprocess.run(sync, env=env, check=True, capture_output=True)
                server = subprocess.Popen(
                    [bin_dir / "instant402", "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL
                )
                procs.append(server)
                our = f"http://127.0.0.1:{port}"
                wait_ready(our, server)
                auth, path = setup_creator(our, key)
                name = f"instant402 test run, {store}"
                results.append(asyncio.run(measure_target(name, our + path, {"topic": "sea"}, auth, server.pid, calls)))
                server.terminate()
                server.wait(timeout=10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        emulator.terminate()
        if schema:
            asyncio.run(_pg(postgres_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    print(
        f"\n{'target':<34} {'added p50 (1 in flight)':>24} {'server CPU/call':>16} {'req/s at 32':>12} {'refused':>8}"
    )
    for r in results:
        print(
            f"{r['name']:<34} {r['p50'] - direct_ms['p50']:>+21.2f} ms {r['cpu']:>13.2f} ms {r['rate']:>12.0f} "
            f"{r['refused']:>8.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round (side by side: per measurement)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--side-by-side", action="store_true", help="every target against the same upstream")
    parser.add_argument("--postgres", metavar="URL", help="side by side: also instant402 on PostgreSQL")
    parser.add_argument("--litellm", metavar="BIN", help="side by side: also a LiteLLM proxy (its `litellm` command)")
    parser.add_argument("--serve-proxy", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy, args.upstream)
    if args.side_by_side:
        return side_by_side(max(args.calls, 640), args.postgres, args.litellm)
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
            auth, path = setup_creator(url, key)
            http = httpx.Client(base_url=url, timeout=30)
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
