"""Run one resource call upstream with its creator's key: shared by the paid route and the owner's test run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from instant402.execution.errors import Category, UpstreamFailure, failure
from instant402.execution.notify import notify
from instant402.execution.upstream import Completion, CompletionRequest, Generation, TextStream
from instant402.keys.secret import SecretKey
from instant402.keys.service import KeyUnavailable, NoOpenRouterKey, open_key_for_upstream, record_upstream_key_failure
from instant402.resources.lifecycle import pause_creator_resources
from instant402.resources.params import build_messages

if TYPE_CHECKING:
    from instant402.resources.models import AnyResource
    from instant402.runtime import Runtime

_REASONS = {
    "key_invalid": "OpenRouter rejected the saved key: replace it to resume.",
    "out_of_credit": "The OpenRouter key is out of credit: top it up and verify the key to resume.",
    "no_key": "No OpenRouter key is saved: add one to resume.",
}


@dataclass(slots=True)
class RunOutcome:
    completion: Completion | None
    failure: UpstreamFailure | None
    run_ms: int
    streamed: bool = False
    first_token_ms: int | None = None  # streamed runs: from the buyer's request to the first text sent

    @property
    def attempts(self) -> list[Any]:
        if self.completion is not None:
            return self.completion.attempts
        return self.failure.attempts if self.failure else []

    @property
    def billed_usd(self):
        return sum((a.cost_usd for a in self.attempts), start=0) or None


def completion_request(rt: Runtime, resource: AnyResource, values: dict[str, Any]) -> CompletionRequest:
    active = resource.active_model_id
    return CompletionRequest(
        model=active,
        fallback_models=[m for m in resource.fallback_model_ids or [] if m != active],
        messages=build_messages(resource, values),
        temperature=resource.temperature,
        top_p=resource.top_p,
        max_tokens=resource.max_tokens,
        output_kind=resource.output_kind,
        json_schema=resource.output_schema,
        headers={"HTTP-Referer": rt.settings.public_url, "X-OpenRouter-Title": "instant402"},
    )


async def run_resource(
    rt: Runtime, resource: AnyResource, values: dict[str, Any], deadline: float, key: SecretKey | None = None
) -> RunOutcome:
    """Call the model with the creator's key and react to key trouble (pause the creator).

    ``key`` is the key the caller opened in its own transaction; without it the key is decrypted (and counted) here.
    """
    started = time.perf_counter()
    request = completion_request(rt, resource, values)
    try:
        if key is None:
            async with rt.db.sessions() as db:
                key = await open_key_for_upstream(db, rt.vault, resource.owner_id)
        completion = await rt.upstream.complete(request, key.reveal(), deadline)
        return RunOutcome(completion, None, _ms(started))
    except KeyUnavailable as exc:
        fail = _key_failure(exc)
    except UpstreamFailure as exc:
        fail = exc
    return await _failed(rt, resource, fail, started)


class StreamedRun:
    """A text resource's run streamed as the model writes it (the paid route's event-stream door).

    ``async for delta in run.deltas()`` yields the text; afterwards ``outcome`` is the run's outcome like
    ``run_resource``'s, with the time to first token. ``cut_short()`` is the outcome of a run whose reader left: the
    upstream call was closed and no usage came back. A run that ended after its text began but without its usage
    learns what the upstream billed from the generation's record (``price_generated``).
    """

    def __init__(self, rt: Runtime, resource: AnyResource, values: dict[str, Any], deadline: float, key, arrived):
        self._rt, self._resource, self._values, self._deadline, self._key = rt, resource, values, deadline, key
        self._arrived = arrived  # time.perf_counter() when the buyer's request came in
        self._started = time.perf_counter()
        self._stream: TextStream | None = None
        self.outcome: RunOutcome | None = None
        self.generated: Generation | None = None  # the upstream's record of a run that ended early, once looked up

    async def deltas(self) -> AsyncIterator[str]:
        rt, resource, key = self._rt, self._resource, self._key
        try:
            if key is None:
                async with rt.db.sessions() as db:
                    key = self._key = await open_key_for_upstream(db, rt.vault, resource.owner_id)
            request = completion_request(rt, resource, self._values)
            self._stream = rt.upstream.stream_text(request, key.reveal(), self._deadline)
            async with contextlib.aclosing(self._stream.__aiter__()) as deltas:
                async for delta in deltas:
                    yield delta
            self.outcome = self._outcome(self._stream.completion, None)
            return
        except KeyUnavailable as exc:
            fail = _key_failure(exc)
        except UpstreamFailure as exc:
            fail = exc
        failed = await _failed(rt, resource, fail, self._started)
        self.outcome = RunOutcome(None, failed.failure, failed.run_ms, True, self._first_token_ms())

    def cut_short(self) -> RunOutcome:
        stream = self._stream
        fail = failure("client_disconnected", Category.buyer_input, "the buyer closed the stream before its end")
        fail.model = stream.model if stream else None
        if stream is not None:
            fail = stream.cut_short(fail)
        return self._outcome(None, fail)

    @property
    def text(self) -> str:
        """The text sent so far."""
        return self._stream.text if self._stream is not None else ""

    async def price_generated(self, outcome: RunOutcome) -> None:
        """A run that ended after its text began but before its usage came (the buyer left, the upstream failed
        mid-answer) was billed by the upstream all the same, for what it generated. Put that cost, from the
        generation's record, on the attempt that wrote the text, so the budget, the usage row and a metered bill
        count it. Leaves ``generated`` None when the record never came (the cost stays unknown)."""
        stream = self._stream
        if stream is None or stream.first_delta_at is None or stream.generation_id is None or not outcome.attempts:
            return
        wait = self._rt.settings.generation_lookup_seconds
        self.generated = await self._rt.upstream.generation(stream.generation_id, self._key.reveal(), wait)
        if self.generated is not None:
            outcome.attempts[-1].cost_usd = self.generated.cost_usd

    def _outcome(self, completion: Completion | None, fail: UpstreamFailure | None) -> RunOutcome:
        return RunOutcome(completion, fail, _ms(self._started), True, self._first_token_ms())

    def _first_token_ms(self) -> int | None:
        first = self._stream.first_delta_at if self._stream else None
        return None if first is None else int((first - self._arrived) * 1000)


def _key_failure(exc: KeyUnavailable) -> UpstreamFailure:
    kind = "no_key" if isinstance(exc, NoOpenRouterKey) else "key_invalid"
    return failure("resource_unavailable", Category.creator_config, str(exc), pause_kind=kind, fallback_ok=False)


async def _failed(rt: Runtime, resource: AnyResource, fail: UpstreamFailure, started: float) -> RunOutcome:
    """A failed run's outcome, after reacting to key trouble (pause the creator's resources, tell them)."""
    if fail.pause_kind:
        async with rt.db.sessions() as db:
            paused = await _pause_for(db, resource.owner_id, fail)
        # Dashboard notice and webhook; the webhook runs in the background and never delays the buyer.
        reason = _REASONS.get(fail.pause_kind, "A problem with your OpenRouter key.")
        details = {"reason": fail.pause_kind, "upstream_status": fail.upstream_status, "paused_resources": paused}
        await notify(rt, resource.owner_id, fail.pause_kind, f"{reason} {paused} resource(s) paused.", details)
    return RunOutcome(None, fail, _ms(started))


async def _pause_for(db: AsyncSession, owner_id: int, fail: UpstreamFailure) -> int:
    if fail.upstream_status in (401, 402):
        await record_upstream_key_failure(db, owner_id, fail.upstream_status, fail.creator_detail)
    reason = _REASONS.get(fail.pause_kind, fail.creator_detail)
    paused = await pause_creator_resources(db, owner_id, fail.pause_kind, reason)
    await db.commit()
    return paused


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
