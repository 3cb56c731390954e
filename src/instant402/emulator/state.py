"""State of one emulator: keys and their credit (optionally kept in a file), scripted faults, the call log, counters."""

from __future__ import annotations

import itertools
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

FAULT_KINDS = ("http", "latency", "pace", "stream_error", "finish_error", "malformed", "empty", "generation_lag")
FAULT_STATUSES = (400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 524, 529)
MAX_CALLS_KEPT = 10_000


def mask_key(key: str) -> str:
    """OpenRouter's key label: the first 12 characters, an ellipsis, the last 3 (short keys show less)."""
    if len(key) <= 18:
        return f"{key[:3]}...{key[-2:]}" if len(key) > 8 else "***"
    return f"{key[:12]}...{key[-3:]}"


@dataclass(slots=True)
class KeyState:
    key: str
    label: str
    limit: Decimal | None = None
    usage: Decimal = Decimal(0)
    is_free_tier: bool = False
    concurrency: int | None = None  # calls in flight above this answer 429 (None: no limit)
    created_at: float = field(default_factory=time.time)

    @property
    def remaining(self) -> Decimal | None:
        return None if self.limit is None else self.limit - self.usage

    def public(self) -> dict:
        """The body of `GET /key` (`data`), numbers as JSON floats like the real API."""
        remaining = self.remaining
        usage = float(self.usage)
        return {
            "label": self.label,
            "limit": None if self.limit is None else float(self.limit),
            "limit_remaining": None if remaining is None else float(remaining),
            "limit_reset": None,
            "usage": usage,
            "usage_daily": usage,
            "usage_weekly": usage,
            "usage_monthly": usage,
            "byok_usage": 0.0,
            "byok_usage_daily": 0.0,
            "byok_usage_weekly": 0.0,
            "byok_usage_monthly": 0.0,
            "include_byok_in_limit": False,
            "is_free_tier": self.is_free_tier,
            "is_management_key": False,
            "is_provisioning_key": False,
            "creator_user_id": None,
            "expires_at": None,
            "rate_limit": {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."},
        }

    def control_view(self) -> dict:
        remaining = self.remaining
        return {
            "label": self.label,
            "limit": None if self.limit is None else str(self.limit),
            "usage": str(self.usage),
            "limit_remaining": None if remaining is None else str(remaining),
            "is_free_tier": self.is_free_tier,
            "concurrency": self.concurrency,
        }


@dataclass(slots=True)
class Fault:
    """One scripted misbehaviour, matched by key and/or model, for the next ``times`` calls (None = until cleared)."""

    id: int
    kind: str
    status: int | None = None
    key: str | None = None
    model: str | None = None
    times: int | None = None
    latency_ms: int = 0
    retry_after: int | None = None
    message: str | None = None
    after_chunks: int = 2
    chunk_ms: int = 0  # for "pace": the wait before each content chunk (a model generating at that speed)
    used: int = 0

    def matches(self, key: str, model: str | None) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.key is not None and self.key != key:
            return False
        return self.model is None or self.model == model

    def view(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "key": mask_key(self.key) if self.key else None,
            "model": self.model,
            "times": self.times,
            "used": self.used,
            "latency_ms": self.latency_ms,
            "retry_after": self.retry_after,
            "message": self.message,
            "after_chunks": self.after_chunks,
            "chunk_ms": self.chunk_ms,
        }


class EmulatorState:
    """Everything mutable; single event loop, so plain attributes are safe."""

    def __init__(self, keys_file: Path | None = None) -> None:
        self.keys: dict[str, KeyState] = {}
        self.keys_file = keys_file  # where keys and their credit are kept across restarts (the sandbox's data dir)
        self.faults: list[Fault] = []
        self._fault_ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self.calls: deque[dict] = deque(maxlen=MAX_CALLS_KEPT)
        # Per-generation stats (GET /generation), each with its key and the time it becomes visible.
        self.generations: OrderedDict[str, tuple[str, float, dict]] = OrderedDict()
        self.in_flight = 0
        self.in_flight_by_label: dict[str, int] = {}
        self.reset_stats()
        self.load_keys()

    # keys
    def load_keys(self) -> None:
        if self.keys_file is None or not self.keys_file.exists():
            return
        for entry in json.loads(self.keys_file.read_text()):
            limit = None if entry.get("limit") is None else Decimal(entry["limit"])
            state = self.add_key(entry["key"], limit, entry.get("label"), bool(entry.get("is_free_tier")))
            state.usage = Decimal(entry.get("usage") or 0)

    def save_keys(self) -> None:
        """Write the keys to ``keys_file`` (owner-only), when there is one; called after every key change."""
        if self.keys_file is None:
            return
        entries = [
            {
                "key": k.key,
                "label": k.label,
                "limit": None if k.limit is None else str(k.limit),
                "usage": str(k.usage),
                "is_free_tier": k.is_free_tier,
            }
            for k in self.keys.values()
        ]
        tmp = self.keys_file.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        tmp.replace(self.keys_file)

    def add_key(
        self,
        key: str,
        limit: Decimal | None = None,
        label: str | None = None,
        is_free_tier: bool = False,
        concurrency: int | None = None,
    ) -> KeyState:
        state = KeyState(
            key=key, label=label or mask_key(key), limit=limit, is_free_tier=is_free_tier, concurrency=concurrency
        )
        self.keys[key] = state
        return state

    # faults
    def add_fault(self, **fields) -> Fault:
        fault = Fault(id=next(self._fault_ids), **fields)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, key: str, model: str | None, kinds: tuple[str, ...]) -> Fault | None:
        """The first live fault of one of ``kinds`` for this call, counted as used."""
        for fault in self.faults:
            if fault.kind in kinds and fault.matches(key, model):
                fault.used += 1
                return fault
        return None

    def take_latency(self, key: str, model: str | None) -> int:
        total = 0
        for fault in self.faults:
            if fault.kind == "latency" and fault.matches(key, model):
                fault.used += 1
                total += fault.latency_ms
        return total

    def take_pace(self, key: str, model: str | None) -> int:
        """Milliseconds to wait before each content chunk of this call (paces add up)."""
        total = 0
        for fault in self.faults:
            if fault.kind == "pace" and fault.matches(key, model):
                fault.used += 1
                total += fault.chunk_ms
        return total

    # generations
    def record_generation(self, key: str, model: str | None, stats: dict) -> None:
        """Keep a finished (or cancelled) generation's stats for ``GET /generation``. OpenRouter shows them a moment
        after the generation ends; a ``generation_lag`` fault (its ``latency_ms``) delays them the same way."""
        lag = self.take_fault(key, model, ("generation_lag",))
        visible_at = time.time() + (lag.latency_ms / 1000 if lag else 0)
        self.generations[stats["id"]] = (key, visible_at, stats)
        while len(self.generations) > MAX_CALLS_KEPT:
            self.generations.popitem(last=False)

    def generation(self, generation_id: str, key: str) -> dict | None:
        """A generation's stats, only for the key that made it, once visible."""
        kept = self.generations.get(generation_id)
        if kept is None or kept[0] != key or kept[1] > time.time():
            return None
        return kept[2]

    # calls and counters
    def reset_stats(self) -> None:
        # Calls still running stay counted in flight; they finish against the fresh counters.
        self.calls.clear()
        self.max_in_flight = self.in_flight
        # Per key too: tests sharing one emulator look at their own key, unaffected by others' slow calls.
        self.max_in_flight_by_label = dict(self.in_flight_by_label)
        self.calls_by_label: dict[str, int] = {}
        self.total_calls = 0
        self.by_status: dict[int, int] = {}
        self.throttled_by_label: dict[str, int] = {}  # 429s for going over a key's concurrency limit

    def call_started(
        self, model_requested: str | None, key_label: str | None, stream: bool, header_names: list[str] | None = None
    ) -> dict:
        self.in_flight += 1
        self.total_calls += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if key_label:
            now = self.in_flight_by_label[key_label] = self.in_flight_by_label.get(key_label, 0) + 1
            self.max_in_flight_by_label[key_label] = max(self.max_in_flight_by_label.get(key_label, 0), now)
            self.calls_by_label[key_label] = self.calls_by_label.get(key_label, 0) + 1
        call = {
            "id": next(self._call_ids),
            "model_requested": model_requested,
            "model_used": None,
            "key_label": key_label,
            "stream": stream,
            "header_names": header_names or [],  # what the client sent, by name only (never a value: the key)
            "status": None,
            "finish_reason": None,
            "fault": None,
            "cost": None,
            "started_at": time.time(),
            "ended_at": None,
        }
        self.calls.append(call)
        return call

    def over_concurrency(self, key: KeyState) -> bool:
        """Whether a call just started goes over its key's concurrency limit (then it is answered 429)."""
        if key.concurrency is None or self.in_flight_by_label.get(key.label, 0) <= key.concurrency:
            return False
        self.throttled_by_label[key.label] = self.throttled_by_label.get(key.label, 0) + 1
        return True

    def call_ended(self, call: dict, status: int) -> None:
        if call["ended_at"] is not None:
            return
        self.in_flight -= 1
        if call["key_label"]:
            self.in_flight_by_label[call["key_label"]] -= 1
        call["status"] = status
        call["ended_at"] = time.time()
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def key_stats(self, key: str) -> dict:
        label = self.keys[key].label if key in self.keys else mask_key(key)
        return {
            "total_calls": self.calls_by_label.get(label, 0),
            "in_flight": self.in_flight_by_label.get(label, 0),
            "max_in_flight": self.max_in_flight_by_label.get(label, 0),
            "throttled": self.throttled_by_label.get(label, 0),
        }

    def stats(self) -> dict:
        return {
            "total_calls": self.total_calls,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "keys": len(self.keys),
            "faults": len(self.faults),
        }
