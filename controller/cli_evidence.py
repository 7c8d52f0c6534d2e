"""curtaild verify | check-export | evidence: checking the journal's chain and signed
exports, and the site's signing key. `write_export` is what `curtaild report --out` uses."""

# ruff: noqa: T201 - a command line prints

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from controller.config import ConfigError, Loaded, load

if TYPE_CHECKING:
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
    from controller.record.chain import ChainError, verify  # noqa: PLC0415

    loaded = _load(args.config)
    if loaded is None:
        return EXIT_CONFIG
    journal = loaded.config.journal.path
    try:
        verdict = verify(journal, args.archive)
    except ChainError as err:
        print(f"cannot verify: {err}", file=sys.stderr)
        return EXIT_BROKEN
    if verdict.problem is None:
        head = f"row {verdict.head.seq} {verdict.head.hex}" if verdict.head.seq else "none"
        print(f"{journal}: intact: {verdict.rows} chained rows verify, {verdict.start}")
        print(f"  head: {head}")
    else:
        p = verdict.problem
        print(f"{journal}: BROKEN: {p.kind}: {p.text}")
        if verdict.rows:
            print(
                f"  the {verdict.rows} chained rows before it verify (up to chain row"
                f" {verdict.head.seq})"
            )
    if verdict.legacy:
        print(f"  {verdict.legacy} older rows, written before the chain began, are not chained")
    return 0 if verdict.problem is None else EXIT_BROKEN


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


def write_export(text: str, out: Path, loaded: Loaded) -> int:
    """Write an export to `out` and, with a site key configured, `out`.sig carrying the
    journal's chain head as it is now."""
    from controller.record.chain import ChainError, connect_ro, heads  # noqa: PLC0415
    from controller.record.signing import SigningError, sign_export  # noqa: PLC0415

    key = None
    if loaded.config.evidence.signing is not None:
        try:
            key = configured_key(loaded)
        except SigningError as err:
            print(f"evidence.signing: {err}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        out.write_text(text)
    except OSError as err:
        print(f"{out}: {err.strerror}", file=sys.stderr)
        return EXIT_BROKEN
    if key is None:
        print(f"wrote {out} (unsigned: no evidence.signing key configured)", file=sys.stderr)
        return 0
    journal = loaded.config.journal.path
    try:
        db = connect_ro(journal)
        try:
            _, _, head = heads(db, journal)
        finally:
            db.close()
    except ChainError as err:
        print(f"cannot read the chain head: {err}", file=sys.stderr)
        return EXIT_BROKEN
    sig = sign_export(
        out,
        key,
        site=loaded.config.site.id,
        head=(head.seq, head.hex) if head.seq else None,
        now=datetime.now(UTC),
    )
    print(f"wrote {out} and {sig} ({key.algorithm} key {key.key_id})", file=sys.stderr)
    return 0
