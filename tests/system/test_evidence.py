"""Evidence a farm can hand over: the journal a real daemon wrote through a curtailment
verifies (`curtaild verify`, as a process too), an edit to it is named; exports are
signed with the site key (Ed25519 or HMAC-SHA256) and checked with `curtaild
check-export`, and with openssl alone as the README tells a recipient."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import cli
from tests.conftest import KEY, KEY_ENV, load_site, site_dict
from tests.system.harness import rig

pytestmark = pytest.mark.system


def curtaild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A site whose journal a real daemon wrote while it met a curtailment."""
    tmp = tmp_path_factory.mktemp("evidence")
    data = site_dict(tmp, miners=4)

    async def run() -> tuple[Any, Any]:
        async with rig(load_site(data)) as r:
            limit_kw = round((r.sup.draw.measured_w or 0) / 1000 * 0.5, 1)
            await r.post(*r.signed(r.curtailment(limit_kw, deadline_s=10)))
            await r.settled("evt-0017#r1", within_s=20)
            status = await r.daemon.evidence.check()
            return status, r.daemon.journal.head

    import asyncio  # noqa: PLC0415

    with pytest.MonkeyPatch.context() as env:  # module-scoped: set the key here too
        env.setenv(KEY_ENV, KEY.decode())
        status, head = asyncio.run(run())
    return {"tmp": tmp, "data": data, "status": status, "head": head}


def site(journaled: dict[str, Any], name: str, **extra: Any) -> Path:
    path = Path(journaled["tmp"]) / name
    path.write_text(yaml.safe_dump({**journaled["data"], **extra}))
    return path


def test_the_daemon_checks_its_own_chain(journaled: dict[str, Any]) -> None:
    status = journaled["status"]
    assert status.verified is True, status.problem
    assert status.rows > 0
    assert status.head == journaled["head"].hex


def test_verify_says_intact_then_names_the_edited_row(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site(journaled, "verify.yaml")
    assert cli.main(["verify", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out
    assert f"head: row {journaled['head'].seq} {journaled['head'].hex}" in out
    done = curtaild("verify", "-c", str(config))
    assert done.returncode == 0, done.stderr

    # The same journal, one command's outcome edited afterwards.
    copy = tmp_path / "journal.db"
    with sqlite3.connect(journaled["data"]["journal"]["path"]) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as db:
        (seq,) = db.execute("SELECT max(seq) FROM commands").fetchone()
        db.execute("UPDATE commands SET outcome=outcome || '!' WHERE seq=?", (seq,))
    tampered = site(journaled, "tampered.yaml", journal={"path": str(copy)})
    done = curtaild("verify", "-c", str(tampered))
    assert done.returncode == 1
    assert f"BROKEN: changed: commands row {seq} " in done.stdout
    assert curtaild("verify", "-c", str(tmp_path / "missing.yaml")).returncode == 2


def signed_site(journaled: dict[str, Any], tmp_path: Path, algorithm: str) -> Path:
    key = tmp_path / "site-key"
    if algorithm == "ed25519":
        assert cli.main(["evidence", "new-key", "--out", str(key)]) == 0
        assert key.stat().st_mode & 0o777 == 0o600
    else:
        key.write_text("a shared secret the site and its grid operator hold\n")
    signing = {"signing": {"algorithm": algorithm, "key": {"file": str(key)}}}
    return site(journaled, f"signed-{algorithm}.yaml", evidence=signing)


@pytest.mark.parametrize("algorithm", ["ed25519", "hmac-sha256"])
def test_a_signed_export_checks_and_a_changed_one_is_refused(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    config = signed_site(journaled, tmp_path, algorithm)
    out = tmp_path / "signals.csv"
    assert cli.main(["report", "-c", str(config), "--format", "csv", "--out", str(out)]) == 0
    sig = json.loads((tmp_path / "signals.csv.sig").read_text())
    head = journaled["head"]
    assert sig["chain"] == {"seq": head.seq, "hash": head.hex}
    assert sig["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sig["algorithm"] == algorithm
    capsys.readouterr()
    if algorithm == "ed25519":
        assert cli.main(["evidence", "public-key", "-c", str(config)]) == 0
        pem = tmp_path / "site.pub.pem"
        pem.write_text(capsys.readouterr().out)
        key = ["--public-key", str(pem)]
        other = tmp_path / "other"
        assert cli.main(["evidence", "new-key", "--out", str(other)]) == 0
        other_cfg = {"signing": {"algorithm": "ed25519", "key": {"file": str(other)}}}
        wrong_cfg = site(journaled, "other.yaml", evidence=other_cfg)
        capsys.readouterr()
        assert cli.main(["evidence", "public-key", "-c", str(wrong_cfg)]) == 0
        wrong = tmp_path / "other.pub.pem"
        wrong.write_text(capsys.readouterr().out)
    else:
        key = ["--hmac-key-file", str(tmp_path / "site-key")]
        wrong = tmp_path / "wrong-key"
        wrong.write_text("another secret")
    assert cli.main(["check-export", str(out), *key]) == 0
    assert f"journal head chain row {head.seq} {head.hex}" in capsys.readouterr().out
    assert cli.main(["check-export", str(out), key[0], str(wrong)]) == 1
    assert "not by this one" in capsys.readouterr().out

    # The statement edited to carry another head: the signature no longer matches.
    forged = dict(sig, chain={"seq": 1, "hash": "00" * 32})
    forged["statement"] = sig["statement"].replace(f"{head.seq} {head.hex}", f"1 {'00' * 32}")
    (tmp_path / "signals.csv.sig").write_text(json.dumps(forged))
    assert cli.main(["check-export", str(out), *key]) == 1
    assert "the signature does not match" in capsys.readouterr().out
    (tmp_path / "signals.csv.sig").write_text(json.dumps(sig))
    out.write_text(out.read_text().replace("reached", "missed", 1))
    assert cli.main(["check-export", str(out), *key]) == 1
    assert "signals.csv was changed" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("algorithm", ["ed25519", "hmac-sha256"])
def test_a_recipient_checks_an_export_with_openssl_alone(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    """The README's procedure, step by step, without curtaild."""
    config = signed_site(journaled, tmp_path, algorithm)
    out = tmp_path / "signals.json"
    assert cli.main(["report", "-c", str(config), "--out", str(out)]) == 0
    sig = json.loads((tmp_path / "signals.json.sig").read_text())
    statement = tmp_path / "statement"
    statement.write_bytes(sig["statement"].encode())
    signature = tmp_path / "sig.bin"
    signature.write_bytes(base64.b64decode(sig["signature"]))
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", str(out)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert f"sha256: {digest}\n" in statement.read_text()

    def openssl_accepts(text: bytes) -> bool:
        statement.write_bytes(text)
        if algorithm == "ed25519":
            pem = tmp_path / "site.pub.pem"
            capsys.readouterr()
            assert cli.main(["evidence", "public-key", "-c", str(config)]) == 0
            pem.write_text(capsys.readouterr().out)
            argv = ["pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin"]
            argv += ["-in", str(statement), "-sigfile", str(signature)]
            return (
                subprocess.run(["openssl", *argv], capture_output=True, check=False).returncode == 0
            )
        secret = (tmp_path / "site-key").read_text().strip()
        mac = subprocess.run(
            ["openssl", "dgst", "-sha256", "-r", "-hmac", secret, str(statement)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
        key_id = subprocess.run(
            ["openssl", "dgst", "-sha256", "-r", "-hmac", secret],
            input="curtaild key id",
            capture_output=True,
            text=True,
            check=True,
        ).stdout[:16]
        return mac == signature.read_bytes().hex() and f" {key_id}\n" in text.decode()

    assert openssl_accepts(sig["statement"].encode())
    assert not openssl_accepts(sig["statement"].replace("site: ", "site: x").encode())


def copied(journaled: dict[str, Any], tmp_path: Path, name: str = "journal.db") -> Path:
    copy = tmp_path / name
    with sqlite3.connect(journaled["data"]["journal"]["path"]) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


def test_verify_checks_the_archive_itself_and_calls_a_cut_without_one_a_problem(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.record.retention import archive_batch  # noqa: PLC0415

    journal = copied(journaled, tmp_path)
    archive = tmp_path / "journal.archive.db"  # the default: beside the journal
    assert archive_batch(journal, archive, datetime.now(UTC), limit=5) == 5
    config = site(journaled, "cut.yaml", journal={"path": str(journal), "retention_days": 400})
    assert cli.main(["verify", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out
    assert "archive and journal end to end" in out
    assert f"with the archive {archive}" in out
    archive.rename(tmp_path / "elsewhere.db")
    assert cli.main(["verify", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED: the journal was cut (chain row 5) but its archive is not at" in out
    assert cli.main(["verify", "-c", str(config), "--archive-absent"]) == 0
    out = capsys.readouterr().out
    assert "intact" in out
    assert "--archive-absent: the journal was cut (chain row 5)" in out
    assert "NOT checked here" in out
    given = ["--archive", str(tmp_path / "elsewhere.db")]
    assert cli.main(["verify", "-c", str(config), *given]) == 0
    capsys.readouterr()
    # Retention off in the config, the archive where it is configured: said, and checked.
    moved = {"path": str(journal), "archive_path": str(tmp_path / "elsewhere.db")}
    config = site(journaled, "no-retention.yaml", journal=moved)
    assert cli.main(["verify", "-c", str(config)]) == 0
    assert "though retention is off" in capsys.readouterr().out


def test_an_export_of_a_journal_that_does_not_verify_is_refused_or_says_unverified(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = copied(journaled, tmp_path)
    with sqlite3.connect(journal) as db:
        (seq,) = db.execute("SELECT max(seq) FROM commands").fetchone()
        db.execute("UPDATE commands SET outcome=outcome || '!' WHERE seq=?", (seq,))
    key = tmp_path / "site-key"
    key.write_text("k" * 32)
    signing = {"signing": {"algorithm": "hmac-sha256", "key": {"file": str(key)}}}
    config = site(journaled, "bad.yaml", journal={"path": str(journal)}, evidence=signing)
    out = tmp_path / "signals.json"
    capsys.readouterr()
    assert cli.main(["report", "-c", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"commands row {seq}" in err
    assert "not exported" in err
    assert not out.exists()
    assert cli.main(["report", "-c", str(config), "--out", str(out), "--unverified"]) == 0
    sig = json.loads((tmp_path / "signals.json.sig").read_text())
    assert sig["statement"].startswith("curtaild-export-v2\n")
    assert "chain: unverified\n" in sig["statement"]
    assert "report-read: at or before chain-head\n" in sig["statement"]
    assert sig["verified"] is False
    assert cli.main(["check-export", str(out), "--hmac-key-file", str(key)]) == 0


def test_an_hmac_key_id_says_nothing_of_the_key_and_a_short_key_is_refused(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hmac  # noqa: PLC0415

    key = tmp_path / "site-key"
    secret = b"a shared secret the site and its grid operator hold"
    key.write_bytes(secret + b"\n")
    signing = {"signing": {"algorithm": "hmac-sha256", "key": {"file": str(key)}}}
    config = site(journaled, "hmac.yaml", evidence=signing)
    out = tmp_path / "signals.json"
    assert cli.main(["report", "-c", str(config), "--out", str(out)]) == 0
    sig = json.loads((tmp_path / "signals.json.sig").read_text())
    assert sig["key_id"] == hmac.new(secret, b"curtaild key id", "sha256").digest()[:8].hex()
    assert sig["key_id"] != hashlib.sha256(secret).hexdigest()[:16]
    assert "chain: verified\n" in sig["statement"]
    key.write_text("short secret\n")
    capsys.readouterr()
    assert cli.main(["report", "-c", str(config), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "evidence.signing.key" in err
    assert "at least 32 bytes" in err


def test_an_export_of_text_that_is_not_utf8_is_written(
    journaled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review's t16: a lone surrogate in a pools event, an HTML report with --out."""
    from controller import cli_evidence  # noqa: PLC0415
    from controller.config import load  # noqa: PLC0415

    key = tmp_path / "site-key"
    key.write_text("k" * 40)
    signing = {"signing": {"algorithm": "hmac-sha256", "key": {"file": str(key)}}}
    config = site(journaled, "utf8.yaml", evidence=signing)
    out = tmp_path / "energy.html"
    loaded = load(config, resolve_secrets=False)
    assert cli_evidence.write_export("<p>evil\ud800:3333</p>", out, loaded) == 0
    assert out.read_bytes() == b"<p>evil?:3333</p>"  # encoded with replacement
    assert cli.main(["check-export", str(out), "--hmac-key-file", str(key)]) == 0
