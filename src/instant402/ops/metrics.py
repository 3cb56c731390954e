"""Prometheus metrics of one process (``GET /metrics``), and the functions other packages record them with.

Labels carry only bounded values: route templates (never paths), status classes, outcome and error codes,
model ids and resource ids ("creator/slug"), each capped at ``MAX_LABEL_VALUES`` distinct values per label
(later ones count as "other"). Never keys, payer addresses, prompts or other free text.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

MAX_LABEL_VALUES = 500
OTHER = "other"

# Paid-call outcomes, one per paid request that got past input validation:
#   quoted            answered 402 with the price (no or unusable payment header)
#   refused           a payment was presented and refused before the model ran (verify failed, mismatch, replay)
#   failed_uncharged  the model (or a limit) failed after the payment was accepted; nothing was settled
#   settled           delivered and paid
#   settle_failed     the model answered but settlement failed; nothing delivered, nothing charged
PAID_CALL_OUTCOMES = (
    "quoted",
    "refused",
    "failed_uncharged",
    "settled",
    "settle_failed",
    "settlement_pending",
    "redelivered",
)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

http_requests = Counter(
    "instant402_http_requests_total",
    "HTTP requests by method, route template and status class",
    ["method", "route", "status_class"],
)
http_duration = Histogram(
    "instant402_http_request_duration_seconds",
    "HTTP request latency by method and route template",
    ["method", "route"],
    buckets=_LATENCY,
)
paid_calls = Counter("instant402_paid_calls_total", "Paid calls by outcome and resource", ["outcome", "resource"])
upstream_attempts = Counter(
    "instant402_upstream_attempts_total",
    "Upstream (OpenRouter) attempts by model, status class and error category",
    ["model", "status_class", "error_category"],
)
upstream_duration = Histogram(
    "instant402_upstream_attempt_duration_seconds", "Upstream attempt latency by model", ["model"], buckets=_LATENCY
)
facilitator_requests = Counter(
    "instant402_facilitator_requests_total",
    "Facilitator requests by operation (supported, verify, settle) and result (ok, rejected, error)",
    ["operation", "result"],
)
facilitator_duration = Histogram(
    "instant402_facilitator_request_duration_seconds",
    "Facilitator request latency by operation",
    ["operation"],
    buckets=_LATENCY,
)
payments_available = Gauge("instant402_payments_available", "1 when the facilitator answered its last request")
budget_pauses = Counter("instant402_budget_pauses_total", "Resources paused because a daily budget ran out")
jobs_finished = Counter("instant402_jobs_finished_total", "Long-run jobs finished by this process", ["status"])
catalog_syncs = Counter("instant402_catalog_syncs_total", "Catalog syncs run by this process by status", ["status"])
# Read from the database at each scrape (the same for every process).
jobs_queued = Gauge("instant402_jobs_queued", "Long-run jobs waiting in the queue")
jobs_oldest_age = Gauge("instant402_jobs_oldest_queued_age_seconds", "Age of the oldest queued job (0: none)")
catalog_models = Gauge("instant402_catalog_models", "Active models in the catalog")
catalog_sync_age = Gauge(
    "instant402_catalog_last_sync_age_seconds", "Seconds since the last successful catalog sync (-1: never)"
)

_seen: dict[str, set[str]] = {}
_seen_lock = threading.Lock()


def bounded(label: str, value: str | None) -> str:
    """``value`` while fewer than MAX_LABEL_VALUES distinct values were seen for ``label``, then "other"."""
    value = value or "none"
    values = _seen.setdefault(label, set())
    if value in values:
        return value
    with _seen_lock:
        if len(values) >= MAX_LABEL_VALUES:
            return OTHER
        values.add(value)
    return value


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


# -- recording --------------------------------------------------------------------------------------------------


_http_children: dict[tuple[str, str, int], tuple] = {}  # labels() takes a lock and builds keys: once per route


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        children = (http_requests.labels(method, route, status_class(status)), http_duration.labels(method, route))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def paid_call(outcome: str, resource: str) -> None:
    """One paid call's outcome (one of PAID_CALL_OUTCOMES) for resource "creator/slug"."""
    if outcome not in PAID_CALL_OUTCOMES:
        raise ValueError(f"unknown paid-call outcome {outcome!r}")
    paid_calls.labels(outcome, bounded("resource", resource)).inc()


def upstream_attempt(model: str, status: int | None, error_category: str | None, seconds: float) -> None:
    model = bounded("model", model)
    upstream_attempts.labels(model, status_class(status), bounded("error_category", error_category)).inc()
    upstream_duration.labels(model).observe(seconds)


def facilitator_request(operation: str, result: str, seconds: float) -> None:
    facilitator_requests.labels(operation, result).inc()
    facilitator_duration.labels(operation).observe(seconds)
    payments_available.set(0 if result == "error" else 1)


def budget_paused() -> None:
    budget_pauses.inc()


def job_finished(status: str) -> None:
    jobs_finished.labels(bounded("job_status", status)).inc()


def catalog_sync(status: str) -> None:
    catalog_syncs.labels(bounded("sync_status", status)).inc()
