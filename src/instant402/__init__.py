"""instant402: a self-hostable pay-per-call AI marketplace server (OpenRouter models behind x402 payments)."""

__version__ = "0.1.0"
