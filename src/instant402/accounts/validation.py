"""Rules for usernames, passwords and payout addresses, each failing with its own sentence."""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email
from eth_utils import is_checksum_address, is_hex_address, to_checksum_address

USERNAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

# Usernames become the first segment of resource URLs, so they must not shadow the product's own paths.
RESERVED_USERNAMES = frozenset(
    [
        "about",
        "account",
        "accounts",
        "admin",
        "administrator",
        "api",
        "app",
        "assets",
        "auth",
        "billing",
        "blog",
        "dashboard",
        "discovery",
        "docs",
        "emulator",
        "explore",
        "facilitator",
        "favicon.ico",
        "health",
        "healthz",
        "help",
        "home",
        "instant402",
        "jobs",
        "login",
        "logout",
        "mcp",
        "me",
        "media",
        "metrics",
        "models",
        "new",
        "null",
        "openapi",
        "openrouter",
        "payments",
        "pricing",
        "privacy",
        "readyz",
        "redoc",
        "register",
        "resources",
        "robots.txt",
        "root",
        "sandbox",
        "security",
        "settings",
        "signup",
        "static",
        "static-offline-docs",
        "status",
        "support",
        "system",
        "terms",
        "undefined",
        "user",
        "users",
        "www",
        "x402",
        "_emulator",
        "well-known",
    ]
)

PASSWORD_MIN = 10
PASSWORD_MAX = 256
ZERO_ADDRESS = "0x" + "0" * 40


def username_problem(username: str) -> str | None:
    if len(username) < 3:
        return "Usernames have at least 3 characters."
    if len(username) > 32:
        return "Usernames have at most 32 characters."
    if username != username.lower():
        return "Usernames are lowercase."
    if not USERNAME_RE.match(username):
        return "Use lowercase letters, digits and single hyphens between them."
    if username in RESERVED_USERNAMES:
        return "This username is reserved."
    return None


def password_problem(password: str) -> str | None:
    if len(password) < PASSWORD_MIN:
        return f"Passwords have at least {PASSWORD_MIN} characters."
    if len(password) > PASSWORD_MAX:
        return f"Passwords have at most {PASSWORD_MAX} characters."
    return None


def normalize_payout_address(value: str) -> str:
    """Return the EIP-55 form; raise ValueError with a sentence when it is not a usable address."""
    value = value.strip()
    if not is_hex_address(value):
        raise ValueError("Enter an EVM address: 0x followed by 40 hexadecimal characters.")
    body = value[2:]
    mixed_case = body != body.lower() and body != body.upper()
    if mixed_case and not is_checksum_address(value):
        raise ValueError("The address checksum does not match: check for a typo.")
    if value.lower() == ZERO_ADDRESS:
        raise ValueError("The zero address cannot receive payments.")
    return to_checksum_address(value)


def normalize_email(value: str) -> str:
    """Return the lowercased address; raise ValueError with a sentence when it is not one."""
    value = value.strip()
    if len(value) > 254:
        raise ValueError("Email addresses have at most 254 characters.")
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        raise ValueError("Enter a valid email address.") from None
