"""The x402 Bazaar extension of a resource, for its HTTP route and for its MCP tool (the SDK's declarations)."""

from __future__ import annotations

from typing import Any

from x402.extensions.bazaar import DeclareMcpDiscoveryConfig, OutputConfig, declare_mcp_discovery_extension

from instant402.payments.gateway import PaymentGateway
from instant402.resources.schemas import input_example, input_schema, output_example, success_schema


def _output(resource: Any) -> dict[str, Any]:
    """The answer as Bazaar describes it: an example body and its schema (only ``output`` required, the example
    has no receipt)."""
    example = output_example(resource)
    schema = {**success_schema(resource), "required": ["output"]}
    return {"example": None if example is None else {"output": example}, "schema": schema}


def http_extension(resource: Any) -> dict[str, Any]:
    """``{"bazaar": …}`` for ``POST /{creator}/{slug}``: a JSON body with an example, the answer's example and
    schema. Accepted by the SDK's ``validate_discovery_extension``."""
    return PaymentGateway.bazaar_extension(
        input_schema(resource), _output(resource), method="POST", input_example=input_example(resource)
    )


def mcp_extension(resource: Any, tool_name: str) -> dict[str, Any]:
    """``{"bazaar": …}`` for the resource's MCP tool (streamable HTTP)."""
    output = _output(resource)
    return declare_mcp_discovery_extension(
        DeclareMcpDiscoveryConfig(
            tool_name=tool_name,
            input_schema=input_schema(resource),
            description=resource.description or resource.name,
            transport="streamable-http",
            example=input_example(resource),
            output=OutputConfig(example=output["example"], schema=output["schema"]),
        )
    )
