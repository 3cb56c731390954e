"""Settings, read from environment variables prefixed ``INSTANT402_`` (every one is documented in README)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Mode(StrEnum):
    production = "production"
    sandbox = "sandbox"
    test = "test"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INSTANT402_", extra="ignore")

    mode: Mode = Mode.production
    data_dir: Path = Path("./var")
    database_url: str | None = None
    database_schema: str | None = None  # PostgreSQL schema to use (tests give each run its own)
    public_url: str = "http://127.0.0.1:8402"
    host: str = "127.0.0.1"
    port: int = 8402

    # Sessions and login protection.
    session_days: int = 14
    cookie_secure: bool | None = None  # None: Secure exactly when public_url is https
    login_free_failures: int = 5
    login_first_lockout_seconds: int = 1  # the first back-off; it doubles with each further failure
    login_max_lockout_seconds: int = 900

    # Logging.
    log_level: str = "INFO"
    log_format: str | None = None  # "json" or "text"; None: json in production, text otherwise

    # OpenRouter (or the emulator).
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    # Model catalog sync: daily at this UTC time ("HH:MM"), plus at start-up when the catalog is empty.
    catalog_sync_enabled: bool | None = None  # None: on in production and sandbox, off in tests
    catalog_sync_schedule: str = "03:00"
    openrouter_key_check_timeout: float = 5.0  # seconds for the live check of a creator's key (GET /key)

    # Key vault: comma-separated "version:base64key" pairs; the highest version encrypts.
    master_keys: str | None = Field(default=None, repr=False)

    redis_url: str | None = None

    # Execution: upstream calls (the product owns retries; the openai SDK's own retries are off).
    upstream_timeout_seconds: float = 120.0  # one attempt's limit; the call's deadline may cut it shorter
    # How long to wait for OpenRouter's record of a stream cut short (its cost), which appears a moment after its end.
    generation_lookup_seconds: float = 10.0
    upstream_max_attempts: int = 3  # attempts per model for transient failures, before the next fallback model
    upstream_backoff_base_seconds: float = 0.5  # exponential backoff with full jitter: base * 2^n, capped below
    upstream_backoff_max_seconds: float = 8.0
    # Execution limits: in-flight upstream calls per creator, adapting to the upstream (grows on answers, shrinks on
    # 429s) between floor and ceiling; it starts from what the key reports, else from creator_concurrency.
    creator_concurrency: int = 8
    creator_concurrency_floor: int = 1
    creator_concurrency_ceiling: int = 64
    creator_queue_size: int = 1000  # waiters per creator at most (a memory guard: waits end at the max wait)
    creator_max_wait_seconds: float = 5.0
    capacity_retry_after_seconds: int = 5  # Retry-After sent with "over capacity" 503s
    concurrency_lease_seconds: float = 60.0  # Redis slot lease, renewed while held; frees slots of crashed processes
    rate_limit_ip_per_minute: int = 120  # paid route and public API, per client IP (0: off)
    rate_limit_payer_per_minute: int = 60  # paid route, per paying address (0: off)
    # Cost control and alerts.
    creator_limits_cache_seconds: float = 5.0  # how long a process trusts its copy of a creator's limits
    webhook_timeout_seconds: float = 3.0  # creator webhooks are fire-and-forget, cut off after this
    # Long runs: resources that may run longer than this answer 202 with a job URL (0: never).
    long_run_seconds: float = 60.0
    job_mode: str = "embedded"  # "embedded": jobs run in the server process; "worker": in `instant402 worker`
    job_concurrency: int = 4  # jobs one process runs at a time
    job_poll_seconds: float = 1.0  # how often an idle runner looks for queued jobs
    job_heartbeat_seconds: float = 5.0  # a running job's claim is refreshed this often
    job_stale_seconds: float = 30.0  # a running job without heartbeat for this long is taken over

    # Payments (x402): the facilitator that verifies and settles, and what buyers pay with.
    facilitator_url: str = "https://x402.org/facilitator"
    facilitator_auth_header: str | None = Field(default=None, repr=False)  # sent as Authorization to the facilitator
    network: str = "eip155:84532"  # CAIP-2 network of payments (Base Sepolia; Base mainnet is eip155:8453)
    asset_address: str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  # USDC on Base Sepolia
    asset_name: str = "USDC"  # the token's EIP-712 domain name (Base mainnet USDC: "USD Coin")
    asset_version: str = "2"  # the token's EIP-712 domain version
    max_timeout_seconds: int = 120  # default validity of a signed payment; keep just above the longest run
    buyer_private_key: str | None = Field(default=None, repr=False)  # key `instant402 call` pays with
    settle_margin_seconds: int = 15  # the model must finish this long before the payment authorization expires
    max_request_bytes: int = 65_536  # largest JSON body the paid route reads
    # A settled call's result is kept this long for the holder of the same signed payment to fetch again.
    result_retention_hours: float = 24.0
    # JSON-RPC of the payment network: settlements whose outcome the facilitator left unknown are checked on chain
    # (EIP-3009 authorizationState), and a payer's balance is read when they have several payments outstanding.
    # Hosted RPC URLs often carry an API key in their path: never shown in the settings' repr or in logs.
    chain_rpc_url: str | None = Field(default=None, repr=False)
    min_run_seconds: int = 10  # a payment must stay valid this long beyond the settle margin to be accepted
    reconcile_seconds: float = 30.0  # how often job runners resolve pending settlements and expire kept results

    # Operations: outages, metrics, readiness.
    facilitator_retry_seconds: float = 5.0  # after a facilitator failure, paid calls answer 503 this long
    outage_retry_after_seconds: int = 5  # Retry-After of 503s for an unreachable database or Redis
    metrics_token: str | None = Field(default=None, repr=False)  # when set, GET /metrics needs "Bearer <token>"
    access_log: bool | None = None  # one line per request; None: on in production (JSON logs)
    readyz_facilitator_cache_seconds: float = 10.0  # how long /readyz trusts its last facilitator /supported answer

    # Hardening.
    max_body_bytes: int = 1_048_576  # largest request body any other route reads (refused with 413 while reading)
    # Reverse proxies (comma-separated addresses or CIDR networks) whose X-Forwarded-For/-Proto are believed; empty:
    # none, the client address is the TCP peer's. Per-IP limits and the login back-off key on that address.
    trusted_proxies: str = ""

    @model_validator(mode="after")
    def _public_url_follows_the_listener(self) -> Settings:
        """Without INSTANT402_PUBLIC_URL, resource URLs name the host and port the server listens on."""
        if "public_url" not in self.model_fields_set:
            host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
            self.public_url = f"http://{host}:{self.port}"
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'instant402.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.public_url.startswith("https://")

    @property
    def uvicorn_proxy_options(self) -> dict:
        """uvicorn's forwarded-header handling, following ``trusted_proxies`` (its default trusts 127.0.0.1)."""
        proxies = ",".join(p.strip() for p in self.trusted_proxies.split(",") if p.strip())
        return {"proxy_headers": bool(proxies), "forwarded_allow_ips": proxies or ""}

    @property
    def json_logs(self) -> bool:
        if self.log_format:
            return self.log_format == "json"
        return self.mode == Mode.production


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
