"""The server side of x402 for the paid route: requirements, the 402 answer, verify and settle.

Everything protocol-related goes through the official SDK: ``x402ResourceServer`` with the exact EVM server
scheme, a facilitator client (the SDK's HTTP client in production, ``LocalFacilitator`` on the devnet), the SDK's
header codecs and Bazaar helpers. SDK objects are built once in ``from_settings``; per request only the small
requirement/response models are made. Facilitator and network failures come back as outcomes with a reason.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from x402 import x402ResourceServer
from x402.extensions.bazaar import OutputConfig, bazaar_resource_server_extension, declare_discovery_extension
from x402.http import (
    CreateHeadersAuthProvider,
    FacilitatorConfig,
    HTTPFacilitatorClient,
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
)
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.schemas import (
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceConfig,
    ResourceInfo,
    SettleResponse,
)

from instant402.ops import metrics
from instant402.payments.upto import SCHEME_UPTO, gas_sponsoring_extension, register_upto, upto_requirements

if TYPE_CHECKING:
    from instant402.config import Settings

log = logging.getLogger(__name__)

SCHEME = "exact"
SERVICE_NAME = "instant402"
SCHEMES = (SCHEME, SCHEME_UPTO)
MAX_HEADER_CHARS = 16_384  # a real PAYMENT-SIGNATURE is ~1 KB; anything far larger is refused before decoding

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_UINT = re.compile(r"^[0-9]{1,78}$")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})+$")


class PaymentError(Exception):
    """A PAYMENT-SIGNATURE header that cannot be used; ``reason`` is a stable snake_case code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class PaymentConfigError(RuntimeError):
    """The facilitator does not support the configured network/scheme, or could not be reached at start."""


@dataclass(frozen=True)
class VerifyOutcome:
    ok: bool
    reason: str | None = None  # stable code when not ok (the facilitator's invalidReason or ours)
    message: str | None = None  # detail for logs; may be technical, show buyers only ``reason``
    payer: str | None = None
    nonce: str | None = None  # the authorization's nonce (0x + 64 hex, see ``payment_terms``), unique per payer
    valid_before: int | None = None  # unix seconds after which the authorization can no longer be settled


@dataclass(frozen=True)
class PaymentTerms:
    """What the claim and the deadlines read from a payment, whatever its scheme."""

    payer: str | None
    nonce: str | None  # 0x + 64 hex: the EIP-3009 nonce, or the Permit2 uint256 nonce (upto)
    valid_before: int | None  # EIP-3009 validBefore, or the Permit2 deadline (upto)


def payment_terms(payload: PaymentPayload) -> PaymentTerms:
    """Payer, nonce and deadline of an ``exact`` (EIP-3009) or ``upto`` (Permit2) payment; None where absent."""
    inner = payload.payload if isinstance(payload.payload, dict) else {}
    if payload.accepted.scheme == SCHEME_UPTO:
        auth = inner.get("permit2Authorization") or {}
        nonce, valid_before = auth.get("nonce"), auth.get("deadline")
        try:
            nonce = f"0x{int(nonce):064x}"
        except (TypeError, ValueError):
            nonce = None
    else:
        auth = inner.get("authorization") or {}
        nonce, valid_before = auth.get("nonce"), auth.get("validBefore")
    try:
        valid_before = int(valid_before)
    except (TypeError, ValueError):
        valid_before = None
    payer = auth.get("from")
    return PaymentTerms(payer if isinstance(payer, str) else None, nonce, valid_before)


@dataclass(frozen=True)
class SettleOutcome:
    ok: bool
    reason: str | None = None
    message: str | None = None
    transaction: str | None = None
    network: str | None = None
    payer: str | None = None
    response: SettleResponse | None = None  # the SDK's answer, encoded as-is in PAYMENT-RESPONSE


def _auth_provider(header: str) -> CreateHeadersAuthProvider:
    headers = {"Authorization": header}
    return CreateHeadersAuthProvider(lambda: {"verify": headers, "settle": headers, "supported": headers})


class PaymentGateway:
    """x402 v2 ``exact`` payments on one network and asset, through one facilitator."""

    def __init__(
        self,
        facilitator: Any,
        *,
        network: str,
        asset_address: str,
        asset_name: str,
        asset_version: str,
        max_timeout_seconds: int = 120,
    ):
        self.facilitator = facilitator
        self.network = network
        self.asset_address = asset_address
        self.asset_name = asset_name
        self.asset_version = asset_version
        self.max_timeout_seconds = max_timeout_seconds
        self.server = x402ResourceServer(facilitator)
        self.server.register(network, ExactEvmServerScheme())
        register_upto(self.server, network)
        self.server.register_extension(bazaar_resource_server_extension)
        self._started = False
        self.upto_supported = False  # the facilitator settles ``upto`` on our network (metered resources)
        self.upto_extensions: dict[str, Any] = {}  # the 402 extensions an ``upto`` offer carries (gas sponsoring)
        self.reachable = False  # the facilitator answered its last request (False after a transport failure)
        self.service_name = SERVICE_NAME  # Bazaar catalogs group a service's resources under it

    @classmethod
    def from_settings(cls, settings: Settings, facilitator: Any = None) -> PaymentGateway:
        """Gateway for the configured network/asset; ``facilitator`` (e.g. the devnet's) replaces the HTTP one."""
        if facilitator is None:
            auth = _auth_provider(settings.facilitator_auth_header) if settings.facilitator_auth_header else None
            facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=settings.facilitator_url, auth_provider=auth))
        return cls(
            facilitator,
            network=settings.network,
            asset_address=settings.asset_address,
            asset_name=settings.asset_name,
            asset_version=settings.asset_version,
            max_timeout_seconds=settings.max_timeout_seconds,
        )

    async def start(self) -> None:
        """Fetch the facilitator's ``/supported`` once and check it covers our network (raises PaymentConfigError)."""
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.server.initialize)
        except Exception as exc:
            metrics.facilitator_request("supported", "error", time.perf_counter() - started)
            raise PaymentConfigError(f"facilitator could not be initialised: {exc}") from exc
        metrics.facilitator_request("supported", "ok", time.perf_counter() - started)
        if self.server.get_supported_kind(2, self.network, SCHEME) is None:
            raise PaymentConfigError(f"the facilitator does not support scheme {SCHEME!r} on {self.network}")
        self.upto_supported = self.server.get_supported_kind(2, self.network, SCHEME_UPTO) is not None
        if self.upto_supported:
            # What the facilitator's /supported lists for upto (e.g. gas sponsoring), as the SDK kept it at initialize:
            # no second request.
            listed = self.server._facilitator_extensions(self.network, SCHEME_UPTO)
            self.upto_extensions = gas_sponsoring_extension(listed)
        self._started = True
        self.reachable = True

    async def aclose(self) -> None:
        close = getattr(self.facilitator, "aclose", None)
        if close is not None:
            await close()

    # -- the 402 answer --------------------------------------------------------------------------------------

    def requirements(
        self, amount_atomic: int, pay_to: str, max_timeout_seconds: int | None = None
    ) -> PaymentRequirements:
        """The one ``exact`` requirement for a price in atomic units, paid to ``pay_to``."""
        if not self._started:
            raise RuntimeError("PaymentGateway.start() must be awaited first")
        if not isinstance(amount_atomic, int) or isinstance(amount_atomic, bool) or amount_atomic <= 0:
            raise ValueError("amount_atomic must be a positive integer")
        config = ResourceConfig(
            scheme=SCHEME,
            network=self.network,
            pay_to=pay_to,
            price={
                "amount": str(amount_atomic),
                "asset": self.asset_address,
                "extra": {"name": self.asset_name, "version": self.asset_version},
            },
            max_timeout_seconds=max_timeout_seconds or self.max_timeout_seconds,
        )
        return self.server.build_payment_requirements(config)[0]

    def upto_requirements(self, max_atomic: int, pay_to: str, max_timeout_seconds: int | None = None):
        """The ``upto`` requirement for a metered call: the buyer signs at most ``max_atomic``."""
        if not self._started:
            raise RuntimeError("PaymentGateway.start() must be awaited first")
        return upto_requirements(
            self.server,
            network=self.network,
            asset=self.asset_address,
            asset_name=self.asset_name,
            asset_version=self.asset_version,
            max_atomic=max_atomic,
            pay_to=pay_to,
            max_timeout_seconds=max_timeout_seconds or self.max_timeout_seconds,
        )

    def payment_required(
        self,
        resource_url: str,
        description: str,
        mime_type: str,
        requirements: PaymentRequirements | list[PaymentRequirements],
        extensions: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> PaymentRequired:
        return PaymentRequired(
            x402_version=2,
            error=error,
            resource=ResourceInfo(
                url=resource_url, description=description, mime_type=mime_type, service_name=self.service_name
            ),
            accepts=list(requirements) if isinstance(requirements, list) else [requirements],
            extensions=extensions or None,
        )

    def payment_required_answer(
        self,
        resource_url: str,
        description: str,
        mime_type: str,
        requirements: PaymentRequirements | list[PaymentRequirements],
        extensions: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """One 402 answer: the base64 ``PAYMENT-REQUIRED`` header value (x402 v2) and the same PaymentRequired as a
        camelCase JSON object for the body, built once."""
        pr = self.payment_required(resource_url, description, mime_type, requirements, extensions, error)
        return encode_payment_required_header(pr), pr.model_dump(mode="json", by_alias=True, exclude_none=True)

    def payment_required_header(self, *args: Any, **kwargs: Any) -> str:
        return self.payment_required_answer(*args, **kwargs)[0]

    def payment_required_body(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.payment_required_answer(*args, **kwargs)[1]

    @staticmethod
    def bazaar_extension(
        input_schema: dict[str, Any],
        output: dict[str, Any] | None = None,
        method: str = "POST",
        input_example: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Bazaar discovery extension (``{"bazaar": {...}}``) for a JSON-body endpoint.

        ``output`` may hold ``example`` (a sample answer) and ``schema`` (its JSON schema).
        """
        output = output or {}
        declared = declare_discovery_extension(
            input=input_example,
            input_schema=input_schema,
            body_type="json",
            output=OutputConfig(example=output.get("example"), schema=output.get("schema")),
        )

        class _Method:  # the SDK enriches the declaration from an HTTP context exposing .method
            pass

        ctx = _Method()
        ctx.method = method.upper()
        return {"bazaar": bazaar_resource_server_extension.enrich_declaration(declared["bazaar"], ctx)}

    # -- decoding -------------------------------------------------------------------------------------------

    @staticmethod
    def decode_payment(header: str) -> PaymentPayload:
        """Parse a ``PAYMENT-SIGNATURE`` header (SDK codec) and check its shape; raises PaymentError."""
        if not header or not header.strip():
            raise PaymentError("missing_payment", "The PAYMENT-SIGNATURE header is empty.")
        if len(header) > MAX_HEADER_CHARS:
            raise PaymentError("invalid_payment_header", "The PAYMENT-SIGNATURE header is too large.")
        try:
            payload = decode_payment_signature_header(header.strip())
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                raise PaymentError("invalid_payload", "The payment payload does not have the x402 shape.") from None
            raise PaymentError("invalid_payment_header", "PAYMENT-SIGNATURE is not base64-encoded JSON.") from None
        except (TypeError, AttributeError):
            raise PaymentError("invalid_payment_header", "PAYMENT-SIGNATURE is not a JSON object.") from None
        return PaymentGateway.check_payload(payload)

    @staticmethod
    def check_payload(payload: Any) -> PaymentPayload:
        """A decoded payment (from a header or another door's wire) must be x402 v2 ``exact`` with a well-formed
        EIP-3009 authorization; raises PaymentError."""
        if not isinstance(payload, PaymentPayload) or payload.x402_version != 2:
            raise PaymentError("unsupported_x402_version", "Only x402 version 2 payments are accepted.")
        if payload.accepted.scheme not in SCHEMES:
            raise PaymentError("unsupported_scheme", "Only the 'exact' and 'upto' schemes are accepted.")
        if payload.accepted.scheme == SCHEME_UPTO:
            _check_permit2_authorization(payload.payload)
        else:
            _check_authorization(payload.payload)
        return payload

    # -- verify and settle ----------------------------------------------------------------------------------

    def _mismatch(self, payload: PaymentPayload, requirements: PaymentRequirements) -> str | None:
        if self.server.find_matching_requirements([requirements], payload) is not None:
            return None
        accepted = payload.accepted
        if accepted.network != requirements.network:
            return "network_mismatch"
        if accepted.asset.lower() != requirements.asset.lower():
            return "asset_mismatch"
        if accepted.amount != requirements.amount:
            return "amount_mismatch"
        if accepted.pay_to.lower() != requirements.pay_to.lower():
            return "pay_to_mismatch"
        return "requirements_mismatch"

    @staticmethod
    def _upto_mismatch(payload: PaymentPayload, requirements: PaymentRequirements) -> str | None:
        """What the buyer actually signed for ``upto``: the maximum, the asset, the payee and the spender (the x402
        upto proxy), checked here so each refusal has its own reason before the facilitator is asked."""
        auth = payload.payload["permit2Authorization"]
        if auth["permitted"]["token"].lower() != requirements.asset.lower():
            return "asset_mismatch"
        if int(auth["permitted"]["amount"]) != int(requirements.amount):
            return "amount_mismatch"  # a maximum below the resource's (or above: never settle more than quoted)
        if auth["spender"].lower() != X402_UPTO_PERMIT2_PROXY_ADDRESS.lower():
            return "invalid_spender"
        if auth["witness"]["to"].lower() != requirements.pay_to.lower():
            return "pay_to_mismatch"
        return None

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements, resource_url: str | None = None
    ) -> VerifyOutcome:
        """Check the payment is for ``requirements`` (and ``resource_url`` when given), then ask the facilitator."""
        terms = payment_terms(payload)
        payer, nonce, valid_before = terms.payer, terms.nonce, terms.valid_before
        base = {"payer": payer, "nonce": nonce, "valid_before": valid_before}
        mismatch = self._mismatch(payload, requirements)
        if not mismatch and requirements.scheme == SCHEME_UPTO:
            mismatch = self._upto_mismatch(payload, requirements)
        if mismatch:
            return VerifyOutcome(False, mismatch, "The payment is not for this resource's requirements.", **base)
        if resource_url and payload.resource and payload.resource.url != resource_url:
            return VerifyOutcome(False, "resource_mismatch", "The payment was made for another resource.", **base)
        started = time.perf_counter()
        try:
            result = await self.server.verify_payment(payload, requirements, **self._declared(requirements))
        except Exception as exc:
            log.warning("facilitator verify failed: %s", exc)
            self._unreachable("verify", started)
            return VerifyOutcome(False, "facilitator_unavailable", str(exc), **base)
        verify = result.verify
        metrics.facilitator_request("verify", "ok" if verify.is_valid else "rejected", time.perf_counter() - started)
        if not verify.is_valid:
            return VerifyOutcome(False, verify.invalid_reason or "invalid_payment", verify.invalid_message, **base)
        return VerifyOutcome(True, None, None, payer=verify.payer or payer, nonce=nonce, valid_before=valid_before)

    def _declared(self, requirements: PaymentRequirements) -> dict[str, Any]:
        """An ``upto`` offer declared gas sponsoring: the facilitator may use the buyer's signed EIP-2612 permit."""
        if requirements.scheme == SCHEME_UPTO and self.upto_extensions:
            return {"declared_extensions": self.upto_extensions}
        return {}

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleOutcome:
        """Ask the facilitator to execute the transfer; never raises."""
        started = time.perf_counter()
        try:
            result = await self.server.settle_payment(payload, requirements, **self._declared(requirements))
        except Exception as exc:
            log.warning("facilitator settle failed: %s", exc)
            self._unreachable("settle", started)
            return SettleOutcome(False, "facilitator_unavailable", str(exc), network=requirements.network)
        metrics.facilitator_request("settle", "ok" if result.success else "rejected", time.perf_counter() - started)
        return SettleOutcome(
            ok=result.success,
            reason=None if result.success else (result.error_reason or "settlement_failed"),
            message=result.error_message,
            transaction=result.transaction or None,
            network=result.network,
            payer=result.payer,
            response=result,
        )

    def _unreachable(self, operation: str, started: float) -> None:
        """The runtime answers 503 to the next calls until the facilitator's /supported answers again."""
        metrics.facilitator_request(operation, "error", time.perf_counter() - started)
        self.reachable = False

    @staticmethod
    def payment_response_header(outcome: SettleOutcome) -> str:
        """Base64 ``PAYMENT-RESPONSE`` header value for a settle outcome (the SDK's SettleResponse encoding)."""
        response = outcome.response or SettleResponse(
            success=outcome.ok,
            error_reason=outcome.reason,
            transaction=outcome.transaction or "",
            network=outcome.network or "",
            payer=outcome.payer,
        )
        return encode_payment_response_header(response)


def _check_authorization(inner: dict[str, Any]) -> None:
    """The EIP-3009 fields must be present and well-formed before anything is sent to a facilitator."""
    auth = inner.get("authorization") if isinstance(inner, dict) else None
    signature = inner.get("signature") if isinstance(inner, dict) else None
    if not isinstance(auth, dict):
        raise PaymentError("invalid_payload", "The payment has no EIP-3009 authorization.")
    checks = {
        "from": _ADDRESS,
        "to": _ADDRESS,
        "value": _UINT,
        "validAfter": _UINT,
        "validBefore": _UINT,
        "nonce": _NONCE,
    }
    for field, pattern in checks.items():
        value = auth.get(field)
        if not isinstance(value, str) or not pattern.match(value):
            raise PaymentError("invalid_payload", f"The authorization field {field!r} is missing or malformed.")
    if not isinstance(signature, str) or not _HEX.match(signature):
        raise PaymentError("invalid_payload", "The payment signature is missing or malformed.")


def _check_permit2_authorization(inner: dict[str, Any]) -> None:
    """The Permit2 ``permitWitnessTransferFrom`` fields of an ``upto`` payment, well-formed before any facilitator."""
    auth = inner.get("permit2Authorization") if isinstance(inner, dict) else None
    signature = inner.get("signature") if isinstance(inner, dict) else None
    if not isinstance(auth, dict):
        raise PaymentError("invalid_payload", "The payment has no Permit2 authorization.")
    permitted, witness = auth.get("permitted"), auth.get("witness")
    if not isinstance(permitted, dict) or not isinstance(witness, dict):
        raise PaymentError("invalid_payload", "The Permit2 authorization has no permitted amount or witness.")
    checks = [
        (auth, "from", _ADDRESS),
        (auth, "spender", _ADDRESS),
        (auth, "nonce", _UINT),
        (auth, "deadline", _UINT),
        (permitted, "token", _ADDRESS),
        (permitted, "amount", _UINT),
        (witness, "to", _ADDRESS),
        (witness, "facilitator", _ADDRESS),
        (witness, "validAfter", _UINT),
    ]
    for fields, field, pattern in checks:
        value = fields.get(field)
        if not isinstance(value, str) or not pattern.match(value) or (pattern is _UINT and int(value) >= 2**256):
            raise PaymentError("invalid_payload", f"The Permit2 authorization field {field!r} is missing or malformed.")
    if not isinstance(signature, str) or not _HEX.match(signature):
        raise PaymentError("invalid_payload", "The payment signature is missing or malformed.")
