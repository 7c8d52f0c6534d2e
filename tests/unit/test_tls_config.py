"""Listener TLS in the config: plain HTTP off loopback needs saying so; the certificate,
key and client CA are loaded at check-config time, each problem named with its location."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli
from controller.config import ConfigError, listeners, parse
from controller.tls import ServerTls, is_loopback
from tests.conftest import site_dict
from tests.pki import Pki

PASSWORD_ENV = "CURTAILD_TEST_TLS_PASSWORD"


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(yaml.safe_dump(data))
    return err.value.problems


def with_tls(tmp_path: Path, pki: Pki, **grid_tls: Any) -> dict[str, Any]:
    """A site whose grid endpoint and operator API both serve TLS."""
    cert, key = pki.issue("server")
    data = site_dict(tmp_path, miners=2)
    tls = {"cert": str(cert), "key": str(key)}
    data["signals"]["http"] = {"listen": "0.0.0.0:8480", "tls": {**tls, **grid_tls}}
    data["api"] = {"listen": "0.0.0.0:8481", "tls": tls}
    return data


@pytest.mark.parametrize("listen", ["0.0.0.0:8480", "10.21.9.5:8480", "[::]:8480", "edge.lan:8480"])
def test_tls_config_off_loopback_needs_tls_or_allow_plaintext(tmp_path: Path, listen: str) -> None:
    data = site_dict(tmp_path, miners=2)
    data["signals"]["http"] = {"listen": listen}
    data["api"] = {"listen": listen.replace("8480", "8481")}
    found = problems(data)
    assert len(found) == 2, found
    host = listen.rpartition(":")[0].strip("[]")
    for where, problem in zip(("signals.http", "api"), found, strict=True):
        assert problem.startswith(f"{where}: {host} is not a loopback address"), problem
        assert "add a tls: section (cert, key), or allow_plaintext: true" in problem


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.9.8.7:8480", "[::1]:8480", "localhost:80"])
def test_tls_config_loopback_stays_valid_without_tls(tmp_path: Path, listen: str) -> None:
    data = site_dict(tmp_path, miners=2)
    data["signals"]["http"] = {"listen": listen}
    http = parse(yaml.safe_dump(data)).config.signals.http
    assert http is not None
    assert http.tls is None
    assert not http.plaintext_exposed


def test_tls_config_allow_plaintext_is_explicit(tmp_path: Path) -> None:
    data = site_dict(tmp_path, miners=2)
    data["signals"]["http"] = {"listen": "0.0.0.0:8480", "allow_plaintext": True}
    http = parse(yaml.safe_dump(data)).config.signals.http
    assert http is not None
    assert http.plaintext_exposed


def test_tls_config_loads_and_checks_both_listeners(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    data = with_tls(tmp_path, pki, client_ca=str(pki.ca_file), require_client_cert=True)
    loaded = parse(yaml.safe_dump(data))
    found = listeners(loaded.config)
    assert set(found) == {"signals.http", "api"}
    assert all(not listener.plaintext_exposed for listener in found.values())
    grid = ServerTls("signals.http", found["signals.http"].tls.files())  # type: ignore[union-attr]
    assert grid.context.verify_mode is ssl.CERT_REQUIRED
    assert grid.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert grid.info.client_cas == 1
    api = ServerTls("api", found["api"].tls.files())  # type: ignore[union-attr]
    assert api.context.verify_mode is ssl.CERT_NONE
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", "-c", str(site)]) == 0
    assert ": ok" in capsys.readouterr().out


def test_tls_config_missing_files_are_named(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    data = with_tls(tmp_path, pki)
    data["signals"]["http"]["tls"] = {
        "cert": str(tmp_path / "nope.crt"),
        "key": str(tmp_path / "nope.key"),
    }
    assert problems(data) == [
        f"signals.http.tls.cert: cannot read {tmp_path / 'nope.crt'}: No such file or directory",
        f"signals.http.tls.key: cannot read {tmp_path / 'nope.key'}: No such file or directory",
    ]


def test_tls_config_key_must_match_the_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    data = with_tls(tmp_path, pki)
    _, other_key = pki.issue("other")
    data["api"]["tls"]["key"] = str(other_key)
    cert = data["api"]["tls"]["cert"]
    assert problems(data) == [f"api.tls.key: {other_key} does not match the certificate in {cert}"]


def test_tls_config_files_that_are_not_pem(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    data = with_tls(tmp_path, pki, client_ca=str(junk))
    data["api"]["tls"] = {"cert": str(junk), "key": str(junk)}
    assert problems(data) == [
        f"signals.http.tls.client_ca: {junk} holds no PEM certificate",
        f"api.tls.cert: {junk} holds no PEM certificate",
        f"api.tls.key: {junk} holds no PEM private key",
    ]


def test_tls_config_encrypted_key_needs_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.issue("locked", password="open sesame")
    data = site_dict(tmp_path, miners=2)
    data["api"] = {"listen": "0.0.0.0:8481", "tls": {"cert": str(cert), "key": str(key)}}
    assert problems(data) == [f"api.tls.key: {key} is encrypted: give key_password"]

    data["api"]["tls"]["key_password"] = {"env": PASSWORD_ENV}
    assert problems(data) == [
        f"api.tls.key_password: environment variable {PASSWORD_ENV} is not set"
    ]
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    assert problems(data) == [
        f"api.tls.key: cannot decrypt {key} with key_password (or it is no PEM private key)"
    ]
    monkeypatch.setenv(PASSWORD_ENV, "open sesame")
    parse(yaml.safe_dump(data))

    secret = tmp_path / "password"
    secret.write_text("open sesame\n")
    data["api"]["tls"]["key_password"] = {"file": str(secret)}
    parse(yaml.safe_dump(data))


def test_tls_config_client_verification_is_the_grid_endpoints(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    data = with_tls(tmp_path, pki, require_client_cert=True)
    data["api"]["tls"]["client_ca"] = str(pki.ca_file)
    assert problems(data) == [
        "signals.http.tls: require_client_cert needs client_ca, the CA bundle to verify with",
        "api.tls.client_ca: unknown key (typo?)",
    ]


def test_tls_config_files_are_not_read_without_secrets(tmp_path: Path) -> None:
    # `curtaild report` and `sim` load without secrets: the key files are secrets too.
    data = site_dict(tmp_path, miners=2)
    data["api"] = {
        "listen": "0.0.0.0:8481",
        "tls": {"cert": str(tmp_path / "a.crt"), "key": str(tmp_path / "a.key")},
    }
    assert parse(yaml.safe_dump(data), resolve_secrets=False).config.api is not None
    assert len(problems(data)) == 2


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("edge.lan", False),
    ],
)
def test_tls_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
