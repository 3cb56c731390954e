"""The vault's cryptography, master key handling and the SecretKey wrapper (no database needed)."""

from __future__ import annotations

import base64
import copy
import json
import pickle
import secrets
import stat

import pytest
from pydantic import BaseModel

from instant402.app import create_app
from instant402.config import Mode, Settings
from instant402.keys.secret import SecretKey, mask_key
from instant402.keys.vault import (
    MasterKeyError,
    Sealed,
    Vault,
    VaultError,
    format_master_entry,
    load_vault,
    master_key_file,
    new_master_key,
    parse_master_keys,
)


def canary() -> str:
    return "sk-or-v1-" + secrets.token_hex(32)


def two_versions() -> tuple[Vault, Vault, Vault]:
    k1, k2 = new_master_key(), new_master_key()
    return Vault({1: k1}), Vault({1: k1, 2: k2}), Vault({2: k2})


def test_seal_and_open_round_trip_with_fresh_data_keys():
    vault = Vault({1: new_master_key()})
    key = canary()
    a = vault.seal(key, owner_id=7)
    b = vault.seal(key, owner_id=7)
    assert vault.open(a, owner_id=7) == key
    assert key.encode() not in a.ciphertext + a.wrapped_key + a.nonce
    # A fresh data key and nonce each time: the same key never gives the same bytes.
    assert a.ciphertext != b.ciphertext and a.wrapped_key != b.wrapped_key and a.nonce != b.nonce
    assert len(a.nonce) == 12 and a.master_version == 1


def test_owner_and_purpose_are_bound():
    vault = Vault({1: new_master_key()})
    sealed = vault.seal(canary(), owner_id=1)
    with pytest.raises(VaultError):
        vault.open(sealed, owner_id=2)
    with pytest.raises(VaultError):
        vault.open(sealed, owner_id=1, purpose="system-prompt")


def test_swapped_parts_do_not_open():
    vault = Vault({1: new_master_key()})
    a, b = vault.seal(canary(), owner_id=1), vault.seal(canary(), owner_id=2)
    # B's ciphertext with A's data key (and the other way round) fails, as does a whole row moved across owners.
    for mixed, owner in (
        (Sealed(b.ciphertext, b.nonce, a.wrapped_key, 1), 1),
        (Sealed(a.ciphertext, a.nonce, b.wrapped_key, 1), 2),
        (b, 1),
        (a, 2),
    ):
        with pytest.raises(VaultError):
            vault.open(mixed, owner_id=owner)


@pytest.mark.parametrize("part", ["ciphertext", "nonce", "wrapped_key"])
def test_flipping_any_byte_fails(part):
    vault = Vault({1: new_master_key()})
    sealed = vault.seal(canary(), owner_id=3)
    raw = bytearray(getattr(sealed, part))
    for position in (0, len(raw) // 2, len(raw) - 1):
        broken = bytearray(raw)
        broken[position] ^= 0x01
        fields = {**sealed.__dict__, part: bytes(broken)}
        with pytest.raises(VaultError):
            vault.open(Sealed(**fields), owner_id=3)


def test_rewrap_moves_to_newest_and_old_master_can_go():
    old, both, new_only = two_versions()
    key = canary()
    sealed = old.seal(key, owner_id=5)
    assert sealed.master_version == 1
    wrapped, version = both.rewrap(sealed.wrapped_key, sealed.master_version, owner_id=5)
    assert version == 2 and wrapped != sealed.wrapped_key
    moved = Sealed(sealed.ciphertext, sealed.nonce, wrapped, version)
    assert new_only.open(moved, owner_id=5) == key
    with pytest.raises(VaultError):
        new_only.open(sealed, owner_id=5)  # version 1 is gone
    # A wrapped key relabelled with another version does not open either.
    with pytest.raises(VaultError):
        both.open(Sealed(sealed.ciphertext, sealed.nonce, sealed.wrapped_key, 2), owner_id=5)
    assert both.seal(key, owner_id=5).master_version == 2


def test_parse_master_keys():
    k1, k2 = new_master_key(), new_master_key()
    text = f" {format_master_entry(1, k1)} ,\n{format_master_entry(2, k2)}\n"
    assert parse_master_keys(text) == {1: k1, 2: k2}
    urlsafe = "3:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    assert parse_master_keys(urlsafe) == {3: b"\xfb" * 32}
    secret_text = base64.b64encode(b"x" * 16).decode()
    for bad in ("", "abc", f"0:{secret_text}", f"1:{secret_text}", "1:!!!notbase64", f"x:{secret_text}"):
        with pytest.raises(MasterKeyError) as info:
            parse_master_keys(bad)
        assert secret_text not in str(info.value)
    entry = format_master_entry(1, k1)
    with pytest.raises(MasterKeyError, match="twice"):
        parse_master_keys(f"{entry},{entry}")


def test_sandbox_generates_a_private_master_key_file_and_reuses_it(tmp_path):
    settings = Settings(mode=Mode.sandbox, data_dir=tmp_path / "data")
    first = load_vault(settings)
    path = master_key_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = first.seal("sk-or-v1-" + "a" * 64, owner_id=1)
    again = load_vault(settings)
    assert again.open(sealed, owner_id=1) == "sk-or-v1-" + "a" * 64
    path.chmod(0o644)
    load_vault(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_configured_master_keys_win_over_the_file(tmp_path):
    k = new_master_key()
    settings = Settings(mode=Mode.sandbox, data_dir=tmp_path, master_keys=format_master_entry(4, k))
    assert load_vault(settings).versions == [4]
    assert not master_key_file(settings).exists()


def test_production_refuses_to_start_without_master_keys(tmp_path):
    settings = Settings(mode=Mode.production, data_dir=tmp_path, master_keys=None)
    with pytest.raises(MasterKeyError, match="instant402 keys new-master"):
        create_app(settings)
    assert not master_key_file(settings).exists()
    good = settings.model_copy(update={"master_keys": format_master_entry(1, new_master_key())})
    assert load_vault(good).newest_version == 1


def test_vault_and_settings_do_not_print_master_keys(tmp_path):
    k = new_master_key()
    entry = format_master_entry(1, k)
    settings = Settings(mode=Mode.sandbox, data_dir=tmp_path, master_keys=entry)
    assert entry.split(":")[1] not in repr(settings) + repr(load_vault(settings))


def test_secret_key_is_masked_everywhere_but_reveal():
    key = canary()
    secret = SecretKey(key)
    masked = mask_key(key)
    assert masked == f"sk-or-v1-…{key[-4:]}"
    assert secret.reveal() == key
    for shown in (
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!r}",
        "%s %r" % (secret, secret),  # noqa: UP031
        "{}".format(secret),  # noqa: UP032
        json.dumps({"k": secret}),
        repr(vars(secret)),
        repr([secret]),
        str(copy.deepcopy(secret)),
        pickle.loads(pickle.dumps(secret)),  # noqa: S301
        pickle.loads(pickle.dumps(secret, protocol=0)),  # noqa: S301
    ):
        assert key not in shown
        assert key[9:] not in shown
    assert masked in str(secret) and json.loads(json.dumps(secret)) == masked

    class Holder(BaseModel):
        key: str

    assert key not in Holder(key=secret).model_dump_json()
    assert SecretKey(key) == secret and SecretKey(canary()) != secret
