"""Envelope encryption of creators' keys.

Each secret gets its own random 256-bit data key and is sealed with AES-256-GCM; the associated data names the
owner and the purpose, so a ciphertext copied to another creator's row (or used for another purpose) does not
open. The data key is itself sealed ("wrapped") with AES-256-GCM under a master key; the row remembers which
master version wrapped it. Master keys come from ``INSTANT402_MASTER_KEYS`` (``version:base64key`` pairs; the
highest version wraps new keys, older ones still unwrap) or, in sandbox and test modes, from a generated file.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from instant402.config import Mode, Settings

PURPOSE = "openrouter-key"
MASTER_KEY_FILE = "master-keys"
_NONCE = 12
_KEY_BYTES = 32


class MasterKeyError(RuntimeError):
    """The master key configuration is missing or malformed (the message never contains key material)."""


class VaultError(Exception):
    """A sealed secret cannot be opened: wrong owner or purpose, tampered bytes, or an unknown master key."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    master_version: int


def _data_aad(owner_id: int, purpose: str) -> bytes:
    return f"instant402/data/{purpose}/owner={owner_id}".encode()


def _wrap_aad(owner_id: int, purpose: str, version: int) -> bytes:
    return f"instant402/wrap/{purpose}/owner={owner_id}/master={version}".encode()


class Vault:
    """Seals and opens secrets with per-secret data keys wrapped by versioned master keys."""

    def __init__(self, masters: Mapping[int, bytes]):
        if not masters:
            raise MasterKeyError("At least one master key is needed.")
        for version, key in masters.items():
            if len(key) != _KEY_BYTES:
                raise MasterKeyError(f"Master key version {version} must be 32 bytes (256 bits).")
        self._masters = dict(masters)
        self._ciphers = {version: AESGCM(key) for version, key in masters.items()}  # built once: one per call adds up

    def __repr__(self) -> str:
        return f"Vault(versions={self.versions})"

    @property
    def versions(self) -> list[int]:
        return sorted(self._masters)

    @property
    def newest_version(self) -> int:
        return max(self._masters)

    def _master(self, version: int) -> AESGCM:
        try:
            return self._ciphers[version]
        except KeyError:
            raise VaultError(f"Master key version {version} is not configured.") from None

    def _wrap(self, data_key: bytes, owner_id: int, purpose: str) -> tuple[bytes, int]:
        version = self.newest_version
        nonce = os.urandom(_NONCE)
        return nonce + self._master(version).encrypt(nonce, data_key, _wrap_aad(owner_id, purpose, version)), version

    def _unwrap(self, wrapped: bytes, version: int, owner_id: int, purpose: str) -> bytes:
        master = self._master(version)
        try:
            return master.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _wrap_aad(owner_id, purpose, version))
        except (InvalidTag, ValueError):
            raise VaultError("The data key does not open (wrong owner, tampered or wrong master key).") from None

    def seal(self, plaintext: str, *, owner_id: int, purpose: str = PURPOSE) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode(), _data_aad(owner_id, purpose))
        wrapped, version = self._wrap(data_key, owner_id, purpose)
        return Sealed(ciphertext=ciphertext, nonce=nonce, wrapped_key=wrapped, master_version=version)

    def open(self, sealed: Sealed, *, owner_id: int, purpose: str = PURPOSE) -> str:
        data_key = self._unwrap(sealed.wrapped_key, sealed.master_version, owner_id, purpose)
        try:
            plain = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _data_aad(owner_id, purpose))
        except (InvalidTag, ValueError):
            raise VaultError("The secret does not open (wrong owner, tampered or swapped).") from None
        return plain.decode()

    def rewrap(self, wrapped_key: bytes, master_version: int, *, owner_id: int, purpose: str = PURPOSE):
        """Return ``(wrapped_key, version)`` under the newest master key; the ciphertext itself is unchanged."""
        data_key = self._unwrap(wrapped_key, master_version, owner_id, purpose)
        return self._wrap(data_key, owner_id, purpose)


def new_master_key() -> bytes:
    return secrets.token_bytes(_KEY_BYTES)


def format_master_entry(version: int, key: bytes) -> str:
    return f"{version}:{base64.b64encode(key).decode()}"


def parse_master_keys(text: str) -> dict[int, bytes]:
    """Parse ``version:base64key`` pairs separated by commas or new lines."""
    masters: dict[int, bytes] = {}
    entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
    for position, entry in enumerate(entries, start=1):
        version_text, sep, encoded = entry.partition(":")
        if not sep or not version_text.strip().isdigit() or int(version_text) < 1:
            raise MasterKeyError(f"Master key entry {position} must look like '<version>:<base64 key>'.")
        version = int(version_text)
        if version in masters:
            raise MasterKeyError(f"Master key version {version} appears twice.")
        encoded = encoded.strip()
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            try:
                key = base64.urlsafe_b64decode(encoded)
            except (binascii.Error, ValueError):
                raise MasterKeyError(f"Master key version {version} is not valid base64.") from None
        if len(key) != _KEY_BYTES:
            raise MasterKeyError(f"Master key version {version} must decode to 32 bytes.")
        masters[version] = key
    if not masters:
        raise MasterKeyError("No master key given.")
    return masters


MISSING_IN_PRODUCTION = (
    "INSTANT402_MASTER_KEYS is not set. Production mode refuses to start without a master key for creators' "
    "OpenRouter keys: run `instant402 keys new-master` and set INSTANT402_MASTER_KEYS to the line it prints."
)


def master_key_file(settings: Settings) -> Path:
    return settings.data_dir / MASTER_KEY_FILE


def _local_master_keys(path: Path) -> str:
    """Read the sandbox/test master key file, creating it (mode 0600) on first use."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path.read_text()
    entry = format_master_entry(1, new_master_key()) + "\n"
    with os.fdopen(fd, "w") as f:
        f.write(entry)
    return entry


def load_vault(settings: Settings) -> Vault:
    """The vault for these settings; production without INSTANT402_MASTER_KEYS raises MasterKeyError."""
    if settings.master_keys:
        return Vault(parse_master_keys(settings.master_keys))
    if settings.mode == Mode.production:
        raise MasterKeyError(MISSING_IN_PRODUCTION)
    return Vault(parse_master_keys(_local_master_keys(master_key_file(settings))))
