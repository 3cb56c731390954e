"""`instant402 emulator` serves the sandbox catalog over HTTP; the control API only with --control."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.support.servers import free_port


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "instant402.cli.main", "emulator", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"emulator exited: {proc.stderr.read().decode()}")
        try:
            httpx.get(f"{url}/api/v1/models", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("emulator did not start")


@pytest.mark.parametrize("control", [True, False])
def test_emulator_command(control: bool):
    proc, url = _serve("--control" if control else "--no-control")
    try:
        models = httpx.get(f"{url}/api/v1/models").json()
        assert models["total_count"] == len(models["data"]) > 20
        stats = httpx.get(f"{url}/_emulator/stats")
        assert stats.status_code == (200 if control else 404)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
