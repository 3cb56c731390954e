"""System notices (cost cap refusals, budget pauses, key trouble) reach the creator's dashboard."""

from __future__ import annotations

from sqlalchemy import select

from instant402.accounts.models import User
from instant402.execution import notify


async def test_dashboard_shows_unread_notices(client, database):
    r = await client.post(
        "/api/v1/auth/signup", json={"username": "nora", "email": "nora@example.com", "password": "long enough pw"}
    )
    assert r.status_code == 201
    assert "was refused" not in (await client.get("/")).text
    async with database.session() as db:
        user_id = await db.scalar(select(User.id).where(User.username == "nora"))
        await notify.record(db, user_id, "cost_cap", "A call to “Haiku” was refused: its worst case exceeds your cap.")
        await db.commit()
    page = (await client.get("/")).text
    assert "was refused: its worst case exceeds your cap." in page
