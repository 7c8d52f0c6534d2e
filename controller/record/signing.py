"""Signed exports: FILE.sig beside an exported FILE, so a recipient can check that the file
is what the site exported and which journal chain head it was exported at.

What is signed is a short statement (UTF-8 text, every line ending in a newline):

    curtaild-export-v2
    file: <the file's name>
    sha256: <the file's SHA-256, hex>
    site: <site id>
    chain-head: <chain seq> <chain hash, hex>     ("chain-head: none" for an empty chain)
    chain: verified | unverified
    report-read: at or before chain-head
    signed-at: <ISO 8601 UTC>
    key: <algorithm> <key id>

`chain: verified`: the journal's chain verified up to that head just before signing;
`unverified`: the site signed without (`--unverified`), the head is what the journal
records. The report was read from the journal before the chain was checked, so what it
shows is at or before the signed head. (curtaild-export-v1 statements lack the two
`chain`/`report-read` lines; they are still checked.)

FILE.sig is JSON holding the same fields, the statement itself (`statement`, exactly the
signed bytes) and the signature (`signature`, base64): Ed25519 over the statement's
bytes, or HMAC-SHA256 of them with the shared key. Key id: the first 16 hex digits of the
SHA-256 of the raw 32-byte Ed25519 public key; for HMAC, of HMAC-SHA256(key, "curtaild
key id") (a hash of the secret alone would let anyone test guesses of it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = "curtaild-export-v2"
VERSION_1 = "curtaild-export-v1"
ALGORITHMS = ("ed25519", "hmac-sha256")
HMAC_MIN_BYTES = 32  # a random secret of at least this much; a short one can be guessed


class SigningError(Exception):
    """A key that cannot be used, or an export that does not check (the reason says why)."""


@dataclass(frozen=True, slots=True)
class SiteKey:
    algorithm: str
    key_id: str
    sign: Callable[[bytes], bytes]
    public_pem: str | None  # Ed25519 only: what the site hands its recipients


def key_id(material: bytes) -> str:
    """An Ed25519 key's id, from its raw public key."""
    return hashlib.sha256(material).hexdigest()[:16]


def hmac_key_id(secret: bytes) -> str:
    """An HMAC key's id: keyed, so it says nothing a guess of the secret could be tested on."""
    return hmac.new(secret, b"curtaild key id", hashlib.sha256).digest()[:8].hex()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def site_key(algorithm: str, secret: str) -> SiteKey:
    """The site's signing key from its configured secret (a PEM private key for Ed25519,
    the shared secret for HMAC-SHA256)."""
    if algorithm == "hmac-sha256":
        material = secret.encode()
        if len(material) < HMAC_MIN_BYTES:
            raise SigningError(
                f"evidence.signing.key: an HMAC-SHA256 key must be at least {HMAC_MIN_BYTES}"
                f" bytes of random secret, this one is {len(material)} (make one with"
                " `openssl rand -hex 32`)"
            )
        return SiteKey(
            algorithm,
            hmac_key_id(material),
            lambda data: hmac.new(material, data, hashlib.sha256).digest(),
            None,
        )
    if algorithm != "ed25519":
        raise SigningError(f"unknown algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    try:
        private = serialization.load_pem_private_key(secret.encode() + b"\n", password=None)
    except (ValueError, TypeError) as err:
        raise SigningError(f"not an unencrypted PEM private key: {err}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningError(f"not an Ed25519 key but {type(private).__name__}")
    public = private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return SiteKey(algorithm, key_id(_raw(public)), private.sign, pem)


def new_ed25519_pem() -> str:
    """A new private key, PEM (PKCS#8, unencrypted: keep the file mode 0600)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def statement(fields: dict[str, Any]) -> bytes:
    head = fields["chain"]
    chain = "none" if head is None else f"{head['seq']} {head['hash']}"
    v1 = fields.get("version", VERSION) == VERSION_1
    lines = [
        VERSION_1 if v1 else VERSION,
        f"file: {fields['file']}",
        f"sha256: {fields['sha256']}",
        f"site: {fields['site']}",
        f"chain-head: {chain}",
    ]
    if not v1:
        lines.append(f"chain: {'verified' if fields['verified'] else 'unverified'}")
        lines.append("report-read: at or before chain-head")
    lines.append(f"signed-at: {fields['signed_at']}")
    lines.append(f"key: {fields['algorithm']} {fields['key_id']}")
    return "".join(f"{line}\n" for line in lines).encode()


def sign_export(
    path: Path,
    key: SiteKey,
    *,
    site: str,
    head: tuple[int, str] | None,
    verified: bool,
    now: datetime,
) -> Path:
    """Write `path`.sig for the file as it is on disk; returns the signature's path.
    `head`: the chain head the verification reached (`verified`), or the recorded one."""
    fields: dict[str, Any] = {
        "version": VERSION,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "site": site,
        "chain": None if head is None else {"seq": head[0], "hash": head[1]},
        "verified": verified,
        "signed_at": now.astimezone(UTC).isoformat(timespec="seconds"),
        "algorithm": key.algorithm,
        "key_id": key.key_id,
    }
    signed = statement(fields)
    out = sig_path(path)
    document = {
        **fields,
        "statement": signed.decode(),
        "signature": base64.b64encode(key.sign(signed)).decode(),
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    return out


def sig_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def check_export(
    path: Path, *, public_pem: bytes | None = None, hmac_key: bytes | None = None
) -> dict[str, Any]:
    """The signed fields if `path` and `path`.sig check with the key given; SigningError
    naming what does not."""
    try:
        document = json.loads(sig_path(path).read_text())
        data = path.read_bytes()
    except (OSError, ValueError) as err:
        raise SigningError(f"cannot read the export or its signature: {err}") from None
    if not isinstance(document, dict):
        raise SigningError(f"{sig_path(path)}: not a signature document")
    try:
        signed = str(document["statement"]).encode()
        signature = base64.b64decode(str(document["signature"]), validate=True)
        fields = {k: document[k] for k in ("file", "sha256", "site", "chain", "signed_at")}
        fields |= {"algorithm": document["algorithm"], "key_id": document["key_id"]}
        fields["version"] = signed.split(b"\n", 1)[0].decode()
        if fields["version"] == VERSION:
            fields["verified"] = document["verified"] is True
    except (KeyError, ValueError) as err:
        raise SigningError(f"{sig_path(path)}: incomplete or malformed: {err}") from None
    if fields["version"] not in (VERSION, VERSION_1):
        raise SigningError(f"unknown statement version {fields['version']!r}")
    if statement(fields) != signed:
        raise SigningError("the signature file's fields differ from the signed statement")
    _check_signature(fields, signed, signature, public_pem, hmac_key)
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, str(fields["sha256"])):
        raise SigningError(
            f"{path.name} was changed: its SHA-256 is {actual}, signed was {fields['sha256']}"
        )
    return fields


def _check_signature(
    fields: dict[str, Any],
    signed: bytes,
    signature: bytes,
    public_pem: bytes | None,
    hmac_key: bytes | None,
) -> None:
    algorithm = fields["algorithm"]
    if algorithm == "ed25519":
        if public_pem is None:
            raise SigningError("signed with Ed25519: give the site's public key (--public-key)")
        _check_ed25519(fields, signed, signature, public_pem)
    elif algorithm == "hmac-sha256":
        if hmac_key is None:
            raise SigningError("signed with HMAC-SHA256: give the shared key (--hmac-key-file)")
        legacy = key_id(hmac_key) if fields["version"] == VERSION_1 else None
        if fields["key_id"] not in (hmac_key_id(hmac_key), legacy):
            raise SigningError(f"signed by key {fields['key_id']}, not by this one")
        expected = hmac.new(hmac_key, signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise SigningError("the signature does not match: the statement was changed")
    else:
        raise SigningError(f"unknown algorithm {algorithm!r}")


def _check_ed25519(fields: dict[str, Any], signed: bytes, signature: bytes, pem: bytes) -> None:
    try:
        public = serialization.load_pem_public_key(pem)
    except ValueError as err:
        raise SigningError(f"not a PEM public key: {err}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise SigningError("the public key is not an Ed25519 key")
    if key_id(_raw(public)) != fields["key_id"]:
        raise SigningError(f"signed by key {fields['key_id']}, not by this one")
    try:
        public.verify(signature, signed)
    except InvalidSignature:
        raise SigningError("the signature does not match: the statement was changed") from None
