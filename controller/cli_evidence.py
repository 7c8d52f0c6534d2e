"""curtaild verify | check-export | evidence: checking the journal's chain and signed
exports, and the site's signing key. `write_export` is what `curtaild report --out` uses."""

# ruff: noqa: T201 - a command line prints

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from controller.config import ConfigError, Loaded, load

if TYPE_CHECKING:
    from controller.record.chain import Head, Verdict
    from controller.record.signing import SiteKey

EXIT_BROKEN = 1
EXIT_CONFIG = 2

Handler = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    verify = sub.add_parser("verify", help="check the journal's hash chain (read-only)")
    verify.add_argument("-c", "--config", type=Path, required=True, help="site config")
    verify.add_argument(
        "--archive",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="check this archive too, end to end with the journal (repeatable)",
    )
    verify.add_argument(
        "--archive-absent",
        action="store_true",
        help="the journal's archive is elsewhere or gone: check the journal from its cut alone"
        " (default: journal.archive_path, or the file beside the journal, is checked too)",
    )
    check = sub.add_parser("check-export", help="check a signed export (FILE and FILE.sig)")
    check.add_argument("file", type=Path)
    key = check.add_mutually_exclusive_group(required=True)
    key.add_argument("--public-key", type=Path, metavar="PEM", help="the site's Ed25519 key")
    key.add_argument("--hmac-key-file", type=Path, metavar="FILE", help="the shared HMAC key")
    evidence = sub.add_parser("evidence", help="the site's evidence signing key")
    what = evidence.add_subparsers(dest="evidence", required=True)
    public = what.add_parser("public-key", help="print the site's public key and key id")
    public.add_argument("-c", "--config", type=Path, required=True, help="site config")
    new = what.add_parser("new-key", help="make an Ed25519 signing key (PEM, mode 0600)")
    new.add_argument("--out", type=Path, required=True, help="where to write it (must not exist)")
    return {"verify": _verify, "check-export": _check_export, "evidence": _evidence}


def _load(path: Path) -> Loaded | None:
    try:
        return load(path, resolve_secrets=False)
    except ConfigError as err:
        print(f"{err.source}: {len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _verify(args: argparse.Namespace) -> int:
    from controller.record.chain import ChainError  # noqa: PLC0415

    loaded = _load(args.config)
    if loaded is None:
        return EXIT_CONFIG
    journal = loaded.config.journal.path
    try:
        verdict, notes = checked(loaded, args.archive, archive_absent=args.archive_absent)
    except ChainError as err:
        print(f"cannot verify: {err}", file=sys.stderr)
        return EXIT_BROKEN
    p = verdict.problem
    if p is None:
        head = f"row {verdict.head.seq} {verdict.head.hex}" if verdict.head.seq else "none"
        print(f"{journal}: intact: {verdict.rows} chained rows verify, {verdict.start}")
        print(f"  head: {head}")
    elif p.kind == UNCHECKED:
        print(f"{journal}: NOT VERIFIED: {p.text}")
    else:
        print(f"{journal}: BROKEN: {p.kind}: {p.text}")
        if verdict.rows:
            print(
                f"  the {verdict.rows} chained rows before it verify (up to chain row"
                f" {verdict.head.seq})"
            )
    for note in notes:
        print(f"  {note}")
    if verdict.legacy:
        print(
            f"  {verdict.legacy} older rows, written before the chain began, are not chained"
            " (their count and digest, taken at its start, are checked)"
        )
    return 0 if p is None else EXIT_BROKEN


UNCHECKED = "unchecked"  # a Problem kind: evidence the chain says exists was not at hand


def checked(
    loaded: Loaded, archives: list[Path], *, archive_absent: bool = False
) -> tuple[Verdict, list[str]]:
    """Verify the configured journal with its archive (those given, else journal.archive_path
    or the file beside the journal, if there). A journal cut for an archive that was not
    checked is a problem (kind UNCHECKED) unless `archive_absent` says so; the notes say
    plainly what was and was not checked. ChainError if a file cannot be read."""
    from controller.record.chain import Problem, verify  # noqa: PLC0415
    from controller.record.retention import default_archive  # noqa: PLC0415

    cfg = loaded.config.journal
    archive = cfg.archive_path or default_archive(cfg.path)
    notes: list[str] = []
    if not archives and not archive_absent and archive.exists():
        archives = [archive]
        notes.append(f"with the archive {archive}")
    verdict = verify(cfg.path, archives)
    if verdict.problem is not None or (verdict.whole and verdict.cut is None):
        return verdict, notes
    cut = f"chain row {verdict.cut.seq}" if verdict.cut else "its older rows"
    if archive_absent:
        notes.append(
            f"--archive-absent: the journal was cut ({cut}); the rows before the cut are in an"
            " archive NOT checked here"
        )
        return verdict, notes
    if not verdict.whole:
        text = (
            f"the journal was cut ({cut}) but its archive is not at {archive}: the rows before"
            " the cut cannot be checked (give --archive FILE, or --archive-absent to check"
            " the journal from its cut alone)"
        )
        return replace(verdict, problem=Problem(UNCHECKED, text)), notes
    if cfg.retention_days is None:
        notes.append(
            f"the journal was cut ({cut}) though retention is off (journal.retention_days):"
            " archive and journal were checked end to end"
        )
    return verdict, notes


def _check_export(args: argparse.Namespace) -> int:
    from controller.record.signing import SigningError, check_export  # noqa: PLC0415

    try:
        if args.public_key is not None:
            fields = check_export(args.file, public_pem=args.public_key.read_bytes())
        else:
            secret = args.hmac_key_file.read_text().strip().encode()
            fields = check_export(args.file, hmac_key=secret)
    except OSError as err:
        print(f"cannot read the key: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except SigningError as err:
        print(f"{args.file}: REFUSED: {err}")
        return EXIT_BROKEN
    head = fields["chain"]
    at = "an empty chain" if head is None else f"chain row {head['seq']} {head['hash']}"
    print(
        f"{args.file}: signed by site {fields['site']} ({fields['algorithm']} key"
        f" {fields['key_id']}) at {fields['signed_at']}, journal head {at}"
    )
    return 0


def _evidence(args: argparse.Namespace) -> int:
    from controller.record.signing import SigningError, new_ed25519_pem  # noqa: PLC0415

    if args.evidence == "new-key":
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            print(f"{args.out}: {err.strerror}", file=sys.stderr)
            return EXIT_CONFIG
        with os.fdopen(fd, "w") as out:
            out.write(new_ed25519_pem())
        print(f"wrote {args.out}; name it in the site config:")
        print(f"  evidence: {{signing: {{algorithm: ed25519, key: {{file: {args.out}}}}}}}")
        return 0
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_CONFIG
    try:
        key = configured_key(loaded)
    except SigningError as err:
        print(f"evidence.signing: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"# {key.algorithm} key id {key.key_id}")
    if key.public_pem is None:
        print("# HMAC-SHA256: no public key; recipients check with the shared secret")
    else:
        sys.stdout.write(key.public_pem)
    return 0


def configured_key(loaded: Loaded) -> SiteKey:
    """The configured signing key; SigningError if none is configured or it is unusable."""
    from controller.record.signing import SigningError, site_key  # noqa: PLC0415

    signing = loaded.config.evidence.signing
    if signing is None:
        raise SigningError("not configured (evidence.signing: algorithm, key)")
    try:
        secret = signing.key.resolve()
    except ValueError as err:
        raise SigningError(f"key: {err}") from None
    return site_key(signing.algorithm, secret)


def write_export(text: str, out: Path, loaded: Loaded, *, unverified: bool = False) -> int:
    """Write an export to `out` and, with a site key configured, `out`.sig carrying the
    journal's chain head. The chain is verified first and the head it reached is signed;
    a journal that does not verify is refused (nothing written) unless `unverified`, and
    then the statement says `chain: unverified`. The report was read before, so the head
    it was read at is at or before the signed one (the statement says that too)."""
    from controller.record.signing import SigningError, sign_export  # noqa: PLC0415

    # Text the journal held that UTF-8 cannot encode (a lone surrogate) is written as "?":
    # the file is UTF-8, and its SHA-256 is of these bytes.
    data = text.encode("utf-8", "replace")
    key = None
    if loaded.config.evidence.signing is not None:
        try:
            key = configured_key(loaded)
        except SigningError as err:
            print(f"evidence.signing: {err}", file=sys.stderr)
            return EXIT_CONFIG
    if key is None:
        if _write(out, data):
            return EXIT_BROKEN
        print(f"wrote {out} (unsigned: no evidence.signing key configured)", file=sys.stderr)
        return 0
    signed = _head_to_sign(loaded, unverified=unverified)
    if signed is None:
        return EXIT_BROKEN
    head, verified = signed
    if _write(out, data):
        return EXIT_BROKEN
    sig = sign_export(
        out,
        key,
        site=loaded.config.site.id,
        head=(head.seq, head.hex) if head.seq else None,
        verified=verified,
        now=datetime.now(UTC),
    )
    chain = "chain verified" if verified else "chain UNVERIFIED"
    print(f"wrote {out} and {sig} ({key.algorithm} key {key.key_id}, {chain})", file=sys.stderr)
    return 0


def _head_to_sign(loaded: Loaded, *, unverified: bool) -> tuple[Head, bool] | None:
    """The head to sign and whether the chain verified up to it; None (said on stderr) if
    it cannot be read, or does not verify and `unverified` was not given."""
    from controller.record.chain import ChainError, connect_ro, heads  # noqa: PLC0415

    journal = loaded.config.journal.path
    try:
        verdict, _ = checked(loaded, [])
        if verdict.problem is None:
            return verdict.head, True
        db = connect_ro(journal)
        try:
            _, _, head = heads(db, journal)
        finally:
            db.close()
    except ChainError as err:
        print(f"cannot verify the chain: {err}", file=sys.stderr)
        return None
    print(f"{journal}: the chain does not verify: {verdict.problem.text}", file=sys.stderr)
    if not unverified:
        print("  not exported (--unverified signs it, saying so)", file=sys.stderr)
        return None
    return head, False


def _write(out: Path, data: bytes) -> bool:
    """Write the export; True if it failed (said on stderr)."""
    try:
        out.write_bytes(data)
    except OSError as err:
        print(f"{out}: {err.strerror}", file=sys.stderr)
        return True
    return False
