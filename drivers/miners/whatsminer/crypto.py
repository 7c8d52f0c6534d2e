"""Whatsminer's cryptography, exactly as btminer and pyasic do it: API v2's md5-crypt
token and AES-256-ECB envelope, and API v3's command token."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.hash import md5_crypt  # type: ignore[import-untyped]  # libpass ships no types


@dataclass(frozen=True, slots=True)
class V2Credentials:
    """What one get_token yields: the token's sign and the AES key for commands."""

    host_passwd_md5: str
    sign: str
    key: bytes


def v2_credentials(password: str, salt: str, newsalt: str, time_: str) -> V2Credentials:
    """md5-crypt the password with the miner's salt, then that plus `time` with newsalt."""
    host_passwd_md5 = _host_passwd_md5(password, salt)
    sign = _md5_crypt_body(host_passwd_md5 + time_, newsalt)
    key = hashlib.sha256(host_passwd_md5.encode()).digest()
    return V2Credentials(host_passwd_md5, sign, key)


def v2_encrypt(key: bytes, plaintext: bytes) -> str:
    """AES-256-ECB over the plaintext zero-padded to 16 bytes, base64 without newlines."""
    padded = plaintext + b"\0" * (-len(plaintext) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the protocol's cipher
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def v2_decrypt(key: bytes, data: str) -> bytes:
    """The plaintext of a base64 AES-256-ECB block string, its padding removed.

    btminer pads with zero bytes; PKCS#7 is tolerated too (other firmware and mocks use it).
    Raises ValueError if `data` is not base64 of whole blocks."""
    try:
        raw = base64.b64decode(data, validate=False)
    except binascii.Error as err:
        raise ValueError(f"not base64: {err}") from None
    if not raw or len(raw) % 16:
        raise ValueError(f"{len(raw)} bytes is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305 - the protocol's cipher
    plain = (decryptor.update(raw) + decryptor.finalize()).rstrip(b"\0")
    pad = plain[-1] if plain else 0
    if 1 <= pad <= 16 and plain.endswith(bytes([pad]) * pad):  # noqa: PLR2004 - AES block size
        plain = plain[:-pad]
    return plain


def v3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    """The first 8 characters of base64(sha256(cmd + password + salt + ts))."""
    digest = hashlib.sha256(f"{cmd}{password}{salt}{ts}".encode()).digest()
    return base64.b64encode(digest).decode()[:8]


@functools.lru_cache(maxsize=1024)
def _host_passwd_md5(password: str, salt: str) -> str:
    """The salt is the miner's stored one, the same for every token (and for every unit
    that shares a password), and pure-Python md5-crypt costs ~1.2 ms: derive it once."""
    return _md5_crypt_body(password, salt)


def _md5_crypt_body(secret: str, salt: str) -> str:
    result: str = md5_crypt.using(salt=salt).hash(secret)
    return result.split("$")[3]
