"""TLS for curtaild's two listeners: a server SSLContext built from the config's files,
and reload on SIGHUP.

Files are read with `cryptography` first, so that a problem names the file and the fault
(a key that does not match its certificate, a wrong password, an empty CA bundle). Only
then are they loaded into a new stdlib `ssl.SSLContext`.

Reload never changes a context that is serving. Each reload builds a complete new
context, and the listener's own context picks the newest one for every new handshake in
its SNI callback. OpenSSL calls that callback on every ClientHello, with or without a
server name. Loading into the live context would be worse in two ways:
`load_cert_chain` installs the new certificate before it checks the key, so a
mismatched pair leaves a context that can complete no handshake at all; and
`load_verify_locations` only adds to the trust store, so a CA removed from the bundle
would stay trusted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

log = structlog.get_logger("curtaild.tls")


class TlsError(Exception):
    """A listener's TLS files cannot be used. `problems` holds (config key, detail) pairs,
    such as ("key", "/etc/x.key does not match the certificate in /etc/x.crt")."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {detail}" for key, detail in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a listener's `tls:` section names. Secrets are resolved each time it loads."""

    cert: Path  # PEM: the server certificate first, then any intermediates
    key: Path  # PEM private key
    password: Callable[[], str] | None = None  # the key's password, read when (re)loading
    client_ca: Path | None = None  # PEM bundle: a client certificate must chain to one
    require_client_cert: bool = False  # without one, the handshake fails


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a listener serves, for the logs."""

    subject: str
    serial: int
    not_before: datetime
    not_after: datetime
    sha256: str  # fingerprint of the certificate, as `openssl x509 -fingerprint` shows it
    client_cas: int  # certificates in the client CA bundle (0: clients are not verified)

    def fields(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "serial": f"{self.serial:x}",
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
            "client_cas": self.client_cas,
        }


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable only from this machine (127.0.0.0/8, ::1).

    `localhost` counts as loopback. Any other name might resolve to anything, so it does
    not count. 0.0.0.0 and :: mean every interface, so they do not count either."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def server_context(files: TlsFiles) -> tuple[ssl.SSLContext, CertInfo]:
    """A new server context for `files`. Raises TlsError, which lists every problem."""
    chain, password, cas = _checked(files, files.client_ca, "client_ca")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key, password)
    except (OSError, ssl.SSLError) as err:  # the files changed since they were read
        raise TlsError([("cert", f"cannot be loaded with {files.key}: {err}")]) from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (OSError, ssl.SSLError) as err:
            raise TlsError([("client_ca", f"cannot be loaded: {err}")]) from None
        # With a CA but no requirement, a client may omit its certificate. One that sends
        # a certificate must still chain to the CA.
        context.verify_mode = ssl.CERT_REQUIRED if files.require_client_cert else ssl.CERT_OPTIONAL
    return context, _info(chain[0], cas)


def _checked(
    files: TlsFiles, ca: Path | None, ca_field: str
) -> tuple[list[x509.Certificate], str | None, list[x509.Certificate]]:
    """The certificate chain, the key's password and the CA certificates, each checked
    before any context is made: a TlsError lists every problem at once."""
    problems: list[tuple[str, str]] = []
    password = None
    chain = _certificates(files.cert, "cert", problems)
    key = None
    try:
        password = files.password() if files.password is not None else None
    except ValueError as err:  # a missing secret: the key cannot be judged without it
        problems.append(("key_password", str(err)))
    else:
        key = _private_key(files.key, password, problems)
    cas = _certificates(ca, ca_field, problems) if ca else []
    if chain and key is not None and not _matches(chain[0], key):
        problems.append(("key", f"{files.key} does not match the certificate in {files.cert}"))
    if problems:
        raise TlsError(problems)
    return chain, password, cas


def _info(leaf: x509.Certificate, cas: list[x509.Certificate]) -> CertInfo:
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        client_cas=len(cas),
    )


def client_context(
    files: TlsFiles, ca: Path, *, check_hostname: bool = True
) -> tuple[ssl.SSLContext, CertInfo]:
    """A client context that presents `files` (cert, key) and trusts only `ca`: the
    OpenADR VEN's mutual TLS. Raises TlsError naming every problem, as server_context."""
    chain, password, cas = _checked(files, ca, "vtn_ca")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    try:
        context.load_cert_chain(files.cert, files.key, password)
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as err:  # the files changed since they were read
        raise TlsError([("cert", f"cannot be loaded: {err}")]) from None
    return context, _info(chain[0], cas)


class ServerTls:
    """A listener's TLS. `context` goes to the server once. `reload()` re-reads the files,
    and new handshakes use them. If they fail, the listener keeps what it had."""

    def __init__(self, listener: str, files: TlsFiles) -> None:
        self.listener = listener
        self._files = files
        self.context, self.info = server_context(files)
        self._current = self.context
        self.context.sni_callback = self._select
        self._log("TLS certificate loaded")

    def reload(self) -> bool:
        """Re-read the certificate, key and client CA. Connections that are already open
        keep theirs. Returns False, and logs an error, if the old ones are kept."""
        try:
            context, info = server_context(self._files)
        except TlsError as err:
            log.error(  # noqa: TRY400 - the problem is in the files, not in the code
                "TLS reload failed; new connections keep the previous certificate",
                listener=self.listener,
                problem=str(err),
                **self.info.fields(),
            )
            return False
        self._current, self.info = context, info
        self._log("TLS certificate reloaded")
        return True

    def _select(self, conn: ssl.SSLObject, _server_name: str | None, ctx: ssl.SSLContext) -> None:
        if self._current is not ctx:
            conn.context = self._current

    def _log(self, event: str) -> None:
        log.info(event, listener=self.listener, **self.info.fields())
        now = datetime.now(UTC)
        if not self.info.not_before <= now <= self.info.not_after:
            # Serve it anyway: clients will refuse it, but refusing to start would also
            # stop the MQTT side and the control loop.
            log.warning(
                "TLS certificate is outside its validity period; clients will refuse it",
                listener=self.listener,
                not_before=self.info.not_before.isoformat(),
                not_after=self.info.not_after.isoformat(),
            )


def _certificates(path: Path, key: str, problems: list[tuple[str, str]]) -> list[x509.Certificate]:
    data = _read(path, key, problems)
    if data is None:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append((key, f"{path} holds no PEM certificate"))
        return []


def _private_key(
    path: Path, password: str | None, problems: list[tuple[str, str]]
) -> PrivateKeyTypes | None:
    data = _read(path, "key", problems)
    if data is None:
        return None
    try:
        return serialization.load_pem_private_key(
            data, password.encode() if password is not None else None
        )
    except TypeError:  # a password for a plain key, or none for an encrypted one
        if password is None:
            problems.append(("key", f"{path} is encrypted: give key_password"))
        else:
            problems.append(("key_password", f"given, but {path} is not encrypted"))
    except (ValueError, UnsupportedAlgorithm):
        if password is None:
            problems.append(("key", f"{path} holds no PEM private key"))
        else:
            problems.append(
                ("key", f"cannot decrypt {path} with key_password (or it is no PEM private key)")
            )
    return None


def _read(path: Path, key: str, problems: list[tuple[str, str]]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as err:
        problems.append((key, f"cannot read {path}: {err.strerror}"))
        return None


def _matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether the key is the certificate's: the same public key."""
    try:
        return _spki(cert.public_key()) == _spki(key.public_key())
    except (ValueError, UnsupportedAlgorithm):  # a key type the certificate cannot hold
        return False


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
