"""Start the OpenRouter emulator over real HTTP in tests and script it through its control API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx

from instant402.emulator.app import create_emulator_app
from tests.support.servers import serve_in_thread


class EmulatorHandle:
    """A running emulator: ``url`` is the server root, ``base_url`` what an OpenAI client points at."""

    def __init__(self, url: str):
        self.url = url
        self.base_url = f"{url}/api/v1"
        self._http = httpx.Client(base_url=f"{url}/_emulator", timeout=10)

    def _ok(self, response: httpx.Response) -> httpx.Response:
        response.raise_for_status()
        return response

    def add_key(
        self,
        key: str,
        limit: Decimal | str | float | None = None,
        label: str | None = None,
        concurrency: int | None = None,
    ) -> dict:
        """``concurrency``: calls of this key in flight above it are answered 429."""
        body = {"key": key, "limit": None if limit is None else str(limit), "label": label, "concurrency": concurrency}
        return self._ok(self._http.post("/keys", json=body)).json()

    def set_concurrency(self, key: str, concurrency: int | None) -> dict:
        return self._ok(self._http.patch(f"/keys/{key}", json={"concurrency": concurrency})).json()

    def top_up(self, key: str, limit: Decimal | str | float | None) -> dict:
        """Set the key's credit limit (None = unlimited)."""
        body = {"limit": None if limit is None else str(limit)}
        return self._ok(self._http.patch(f"/keys/{key}", json=body)).json()

    def keys(self) -> list[dict]:
        return self._ok(self._http.get("/keys")).json()["data"]

    def fault(
        self,
        status: int | None = None,
        *,
        kind: str | None = None,
        key: str | None = None,
        model: str | None = None,
        times: int | None = None,
        latency_ms: int | None = None,
        retry_after: int | None = None,
        message: str | None = None,
        after_chunks: int | None = None,
    ) -> dict:
        body = {
            "status": status,
            "kind": kind,
            "key": key,
            "model": model,
            "times": times,
            "latency_ms": latency_ms,
            "retry_after": retry_after,
            "message": message,
            "after_chunks": after_chunks,
        }
        return self._ok(self._http.post("/faults", json={k: v for k, v in body.items() if v is not None})).json()

    def faults(self) -> list[dict]:
        return self._ok(self._http.get("/faults")).json()["data"]

    def clear_faults(self) -> None:
        self._ok(self._http.delete("/faults"))

    def calls(self) -> list[dict]:
        return self._ok(self._http.get("/calls")).json()["data"]

    def stats(self, key: str | None = None) -> dict:
        """Counters for the whole emulator, or for one key's calls only (``total_calls``, ``max_in_flight``)."""
        return self._ok(self._http.get("/stats", params={"key": key} if key else None)).json()

    def reset(self) -> None:
        self._ok(self._http.post("/reset"))

    def close(self) -> None:
        self._http.close()


@contextmanager
def running_emulator(catalog_path: Path | None = None, *, control: bool = True) -> Iterator[EmulatorHandle]:
    """Serve an emulator (the sandbox catalog unless ``catalog_path``) on a free port for the block's duration."""
    with serve_in_thread(create_emulator_app(catalog_path, control=control)) as url:
        handle = EmulatorHandle(url)
        try:
            yield handle
        finally:
            handle.close()
