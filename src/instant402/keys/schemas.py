from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from instant402.keys.service import CheckOutcome, KeyActivity, KeyState


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=10_000, description="Your OpenRouter key (sk-or-v1-…); it is never shown again.")


class KeyOut(BaseModel):
    status: str = Field(description="verified | unverified | invalid | out_of_credit")
    masked: str = Field(description="A masked form such as sk-or-v1-…a1b2.")
    label: str | None
    limit: Decimal | None = Field(description="Credit limit in USD (exact decimal); null = no limit.")
    limit_remaining: Decimal | None = Field(description="Credit left in USD (exact decimal); null = unlimited.")
    limit_reset: str | None
    is_free_tier: bool | None
    last_verified_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class CheckOut(KeyOut):
    verification: str = Field(description="accepted | rejected | unreachable")
    message: str
    resumed_resources: int


class DeleteOut(BaseModel):
    removed: bool
    paused_resources: int
    message: str


class EventOut(BaseModel):
    kind: str
    result: str | None
    detail: str | None
    masked: str | None
    at: datetime


class DailyCount(BaseModel):
    day: date
    count: int


class ActivityOut(BaseModel):
    events: list[EventOut]
    daily_decryptions: list[DailyCount]


def key_out(state: KeyState) -> KeyOut:
    return KeyOut(**state.__dict__)


def check_out(outcome: CheckOutcome) -> CheckOut:
    return CheckOut(
        **outcome.state.__dict__,
        verification=outcome.verification,
        message=outcome.message,
        resumed_resources=outcome.resumed_resources,
    )


def activity_out(activity: KeyActivity) -> ActivityOut:
    return ActivityOut(
        events=[
            EventOut(kind=e.kind, result=e.result, detail=e.detail, masked=e.masked, at=e.created_at)
            for e in activity.events
        ],
        daily_decryptions=[DailyCount(day=d, count=n) for d, n in activity.daily_decryptions],
    )
