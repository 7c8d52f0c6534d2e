"""Whatsminer's crypto, written independently of the driver's so that a shared mistake
cannot hide: md5-crypt for API v2's key and tokens, AES-256-ECB for its envelope, and API
v3's command token.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.hash import md5_crypt  # type: ignore[import-untyped]  # libpass ships no types


def crypt_body(secret: str, salt: str) -> str:
    """The 22-character body of md5-crypt ("$1$salt$body")."""
    hashed: str = md5_crypt.using(salt=salt).hash(secret)
    return hashed.rsplit("$", 1)[1]


def v3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    digest = hashlib.sha256((cmd + password + salt + str(ts)).encode()).digest()
    return base64.b64encode(digest)[:8].decode()


def open_sealed(key: bytes, sealed: bytes) -> bytes:
    """Decrypt a request; zero padding (pyasic) and PKCS#7 (CryptoJS clients) both work."""
    if not sealed or len(sealed) % 16:
        raise ValueError("not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305 - btminer's cipher
    plain = decryptor.update(sealed) + decryptor.finalize()
    last = plain[-1]
    if 1 <= last <= 16 and plain[-last:] == bytes([last]) * last:  # noqa: PLR2004 - block size
        plain = plain[:-last]
    return plain.rstrip(b"\0")


def seal(key: bytes, plain: bytes) -> str:
    """Encrypt a reply zero-padded, as btminer does (pyasic strips zeros, not PKCS#7)."""
    padded = plain + bytes(-len(plain) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - btminer's cipher
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()
