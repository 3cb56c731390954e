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
