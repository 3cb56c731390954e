"""The API keeps the promises of its own OpenAPI schema under schemathesis, anonymous and with a creator's token.

Over a thousand generated requests per run against the real server (uvicorn, over HTTP). Checked on every answer:
no 5xx, every status documented, bodies and headers as documented, schema-invalid requests refused, 405s with an
`Allow` header naming the path's methods. Not checked: that every schema-valid request is accepted (some rules need
the database: a model must be in the catalog, a page must exist).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from instant402.app import create_app
from instant402.config import Settings
from tests.support.servers import serve_in_thread

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES_PER_OPERATION = 12
MIN_CASES = 1_000


@pytest.fixture(scope="module")
def server(settings_overrides, migrated):
    app = create_app(Settings(**settings_overrides))
    with serve_in_thread(app) as url:
        yield url


def creator_token(url: str) -> str:
    with httpx.Client(base_url=url) as http:
        body = {"username": "fuzzing-creator", "email": "fuzz@example.com", "password": "correct horse battery"}
        r = http.post("/api/v1/auth/signup", json=body)
        assert r.status_code == 201, r.text
        r = http.post("/api/v1/me/tokens", json={"name": "fuzz"}, headers={"X-CSRF-Token": r.json()["csrf_token"]})
        assert r.status_code == 201, r.text
        return r.json()["token"]


def run_schemathesis(url: str, workdir: Path, *extra: str) -> str:
    """Run the schemathesis CLI (in ``workdir``: it keeps a corpus of failures in its working directory)."""
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "15",
        "--no-shrink",
        "--workers",
        "1",
        "--continue-on-failure",
        # /readyz answers 503 whenever a part is not ready (here: no facilitator, no catalog): that is its job.
        "--exclude-path",
        "/readyz",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=workdir)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    return out


def cases(out: str) -> int:
    match = re.search(r"(\d+) generated, (\d+) passed", out)
    assert match, out[-3000:]
    assert match.group(1) == match.group(2), out[-3000:]
    return int(match.group(1))


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed (dev extra)")
def test_schema_and_behaviour_agree(app, server, tmp_path):
    anonymous = run_schemathesis(server, tmp_path)
    # The creator's run leaves the token's own revocation out: it would end the run's authentication.
    token = creator_token(server)
    signed_in = run_schemathesis(
        server, tmp_path, "--header", f"Authorization: Bearer {token}", "--exclude-path", "/api/v1/me/tokens/{token_id}"
    )
    counts = cases(anonymous), cases(signed_in)
    print(f"schemathesis: {counts[0]} anonymous and {counts[1]} signed-in cases, all passed")
    assert min(counts) >= MIN_CASES
