"""Invalid text (a lone UTF-16 surrogate, as a JSON \\u escape) in a buyer's input is a 422 before any quote: it could
never be sent upstream, so it must not get as far as a payment."""

from __future__ import annotations

import json

import pytest

from instant402.resources.params import validate_input
from tests.test_resources_helpers import published, seed_catalog
from tests.test_resources_templates import resource


@pytest.fixture(autouse=True)
async def _catalog(database):
    await seed_catalog(database)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"text": "\\ud800"}',
        b'{"text": "fine until here \\udfff"}',
        b'{"text": "ok", "\\ud800": 1}',
    ],
)
async def test_a_lone_surrogate_is_refused_before_the_quote(client, app, make_creator, raw):
    creator, resource = await published(client, app, make_creator)
    headers = {"Content-Type": "application/json"}
    for path in (f"/{creator.username}/{resource['slug']}", f"/api/v1/me/resources/{resource['id']}/test"):
        r = await client.post(path, content=raw, headers={**headers, **creator.headers})
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_input"
        assert "PAYMENT-REQUIRED" not in r.headers


def test_valid_astral_text_still_passes():
    # A surrogate pair in JSON is one valid character (here U+1F600): accepted as it was.
    values = validate_input(resource(), json.loads(b'{"text": "\\ud83d\\ude00 ok"}'))
    assert values["text"] == "\U0001f600 ok"


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("PATCH", "/api/v1/me/limits", b'{"webhook_url": "https://hooks.example/\\ud800"}'),
        ("POST", "/api/v1/me/tokens", b'{"name": "\\ud800"}'),
    ],
)
async def test_invalid_text_anywhere_is_a_422_that_changes_nothing(client, make_creator, method, path, raw):
    creator = await make_creator()
    before = (await client.get("/api/v1/me/limits", headers=creator.headers)).json()
    headers = {**creator.headers, "Content-Type": "application/json"}
    r = await client.request(method, path, content=raw, headers=headers)
    assert r.status_code == 422, r.text
    assert (await client.get("/api/v1/me/limits", headers=creator.headers)).json() == before
