"""Creators' OpenRouter keys: envelope-encrypted, verified, masked, rotatable, audited."""
