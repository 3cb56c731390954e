"""The sandbox as a new user runs it: one command, then a paid call from outside, then Ctrl-C and a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from instant402.payments.buyer import make_buyer_client, pay_url
from instant402.sandbox.demo import DEMO_RESOURCES
from tests.support.servers import free_port_block

pytestmark = pytest.mark.slow


def start_sandbox(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANT402_")}
    return subprocess.Popen(
        [sys.executable, "-m", "instant402.cli.main", "sandbox", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sandbox exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("sandbox did not become ready")


def poll_job(url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(url, timeout=10).json()
        if body["state"] == "succeeded":
            return body
        assert body["state"] in ("queued", "running"), body
        time.sleep(0.3)
    raise AssertionError("the job did not finish")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


async def test_sandbox_end_to_end(tmp_path):
    data_dir, port = tmp_path / "sandbox", free_port_block(3)  # the app, then the chain and the facilitator
    proc = start_sandbox(data_dir, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url)
        manifest = json.loads((data_dir / "sandbox.json").read_text())
        assert manifest["url"] == url
        assert {"rpc_url", "facilitator_url", "network", "asset", "buyer_private_key", "demo_resources"} <= set(
            manifest
        )
        assert len(manifest["demo_resources"]) >= 3
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert "<form" in httpx.get(f"{url}/signup").text
        # The facilitator and the chain answer over HTTP.
        assert httpx.get(f"{manifest['facilitator_url']}/supported").status_code == 200
        rpc = httpx.post(manifest["rpc_url"], json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        assert int(rpc.json()["result"], 16) == int(manifest["network"].split(":")[1])
        # Pay each demo resource with the SDK's own client and the sandbox buyer key.
        client = make_buyer_client(
            manifest["buyer_private_key"], allow_assets=[{"network": manifest["network"], "asset": manifest["asset"]}]
        )
        kinds = set()
        for resource in manifest["demo_resources"]:
            info = httpx.get(f"{url}/api/v1/resources/{resource.removeprefix(url + '/')}").json()
            params = {p["name"]: "sandbox" for p in info["parameters"] if p.get("required")}
            result = await pay_url(client, resource, json=params)
            body = result.response.json()
            if result.response.status_code == 202:  # a long run (the image resource): follow the job
                body = poll_job(body["job"]["url"])
            else:
                assert result.response.status_code == 200, result.response.text
            assert body["receipt"]["transaction"], body
            kinds.add(body["output"]["type"])
        assert kinds == {"text", "json", "image"}
    finally:
        out = stop(proc)
    assert proc.returncode == 0 or proc.returncode == -signal.SIGINT, out
    assert "instant402 sandbox stopped." in out

    # A second start reuses the data dir: same demo creator, no duplicate resources.
    proc = start_sandbox(data_dir, port)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/resources", params={"creator": "demo"}).json()
        assert listed["total"] == len(DEMO_RESOURCES)
    finally:
        stop(proc)
