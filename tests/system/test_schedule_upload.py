"""Auction schedules over the real operator API of the running daemon: uploads that
become grants and raise a surplus-only site's limit when their hour comes, every bad
row and file refused with its row and field and journaled while nothing held changes,
a grid cancel that withdraws an uploaded grant, and `curtaild grants import` run as a
separate process against the rig."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from controller.intake.schedule import MAX_BYTES, MAX_ROWS
from tests.conftest import API_TOKENS, api_section, load_site, site_dict
from tests.pki import Pki
from tests.system.harness import Rig, iso, rig

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
PATH = "/api/v1/grants/schedule"
_ALMATY = timezone(timedelta(hours=5))
MINERS = 8
FULL_KW = MINERS * 3.2  # the test farm's rating, near enough


class Uploader:
    """POSTs schedules to one daemon's operator API."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def send(
        self,
        data: bytes,
        content_type: str | None = "text/csv",
        *,
        role: str | None = "operator",
    ) -> tuple[int, Any, str]:
        headers = {} if role is None else {"Authorization": f"Bearer {API_TOKENS[role]}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with self.session.post(self.base + PATH, data=data, headers=headers) as reply:
            text = await reply.text()
            kind = reply.headers.get("Content-Type", "")
            return reply.status, json.loads(text) if "json" in kind else text, kind

    async def status(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {API_TOKENS['viewer']}"}
        async with self.session.get(self.base + "/api/v1/status", headers=headers) as reply:
            assert reply.status == 200
            data: dict[str, Any] = await reply.json()
            return data


@asynccontextmanager
async def schedule_rig(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Rig, Uploader]]:
    data = site_dict(
        tmp_path, miners=MINERS, mode="surplus-only", base_allowance_kw=1.0, api=api_section()
    )
    data["grid"].update(kw)
    async with (
        rig(load_site(data)) as r,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        assert r.daemon.api is not None
        assert r.daemon.api.port is not None
        yield r, Uploader(session, r.daemon.api.port)


def at(r: Rig, seconds: float) -> str:
    """An instant `seconds` from the rig's now, written at +05:00 as a KOREM file would."""
    moment = r.clock.now() + timedelta(seconds=seconds)
    return moment.astimezone(_ALMATY).isoformat()


def csv_file(*rows: tuple[object, ...], header: str = "start,end,kw,auction") -> bytes:
    return ("\n".join([header, *(",".join(str(c) for c in row) for row in rows)]) + "\n").encode()


def limit_kw(r: Rig) -> float:
    view = r.daemon.feed.latest
    assert view is not None
    assert view.limit is not None
    return view.limit.limit_w / 1000


def schedule_signals(r: Rig) -> list[tuple[Any, ...]]:
    return r.daemon.journal.rows(
        "SELECT source, signal_id, revision, kind, verdict, detail, body FROM signals"
        " WHERE transport='schedule' ORDER BY seq"
    )


async def test_system_uploaded_grants_raise_the_limit_when_their_hour_comes(
    tmp_path: Path,
) -> None:
    async with schedule_rig(tmp_path) as (r, up):
        await r.step(10)
        assert limit_kw(r) == 1.0  # no grant: the base allowance
        csv_data = csv_file((at(r, 30), at(r, 120), 10, "korem-a"))
        status, answer, _ = await up.send(csv_data, "text/csv; charset=utf-8")
        assert status == 201, answer
        assert answer["sha256"] == hashlib.sha256(csv_data).hexdigest()
        assert answer["uploaded_by"] == "operator-1"
        [grant] = answer["grants"]
        assert (grant["id"], grant["revision"], grant["type"], grant["granted_kw"]) == (
            "auction:korem-a",
            1,
            "grant",
            10.0,
        )
        assert (grant["source"], grant["via"], grant["uploaded_by"]) == (
            "schedule:operator-1",
            "schedule",
            "operator-1",
        )
        assert grant["active"] is False
        json_rows = {"rows": [{"start": at(r, 120), "end": at(r, 600), "kw": 20,
                               "reference": "korem-b"}]}  # fmt: skip
        json_data = json.dumps(json_rows).encode()
        status, answer, _ = await up.send(json_data, "application/json", role="admin")
        assert status == 201, answer
        assert [g["id"] for g in answer["grants"]] == ["auction:korem-b"]
        assert answer["uploaded_by"] == "admin-1"
        await r.step(5)
        assert limit_kw(r) == 1.0  # not before their hour
        # Its hour comes: the limit rises and the farm wakes into it.
        await r.run_until(lambda: limit_kw(r) == 11.0, within_s=40)
        view = r.daemon.feed.latest
        assert view is not None
        assert view.limit is not None
        assert any("grants auction:korem-a r1" in why for why in view.limit.reasons)
        # No miner runs in the 1 kW base allowance; one does inside the grant.
        await r.run_until(lambda: r.farm.total_power_w() > 2_000, within_s=60)
        assert r.farm.total_power_w() <= 11_000
        # The next award takes over back to back.
        await r.run_until(lambda: limit_kw(r) == 21.0, within_s=100, dt=0.5)
        state = await up.status()
        shown = {s["id"]: s for s in state["signals"]}
        assert set(shown) == {"auction:korem-a", "auction:korem-b"}  # a ended, kept a while
        assert shown["auction:korem-b"]["active"] is True
        assert (shown["auction:korem-b"]["via"], shown["auction:korem-b"]["uploaded_by"]) == (
            "schedule",
            "admin-1",
        )
        # Journaled: each grant a signal of transport "schedule", with who and the hash.
        rows = schedule_signals(r)
        assert [(s, i, rev, k, v) for s, i, rev, k, v, _, _ in rows] == [
            ("schedule:operator-1", "auction:korem-a", 1, "grant", "received"),
            ("schedule:admin-1", "auction:korem-b", 1, "grant", "received"),
        ]
        assert hashlib.sha256(csv_data).hexdigest() in rows[0][5]
        body = json.loads(rows[1][6])
        assert (body["uploaded_by"], body["file_sha256"], body["reference"]) == (
            "admin-1",
            hashlib.sha256(json_data).hexdigest(),
            "korem-b",
        )
        events = r.daemon.journal.rows(
            "SELECT subject, detail FROM events WHERE kind='operator' ORDER BY seq"
        )
        assert [(json.loads(d)["what"], json.loads(d)["by"]) for _, d in events] == [
            ("schedule uploaded", "operator-1"),
            ("schedule uploaded", "admin-1"),
        ]
        # The deadlines are the pushed grant's: a grant's own and its end's.
        keys = {o.key for o in [*r.sup.deadlines.finished, *r.sup.deadlines.pending]}
        assert {"auction:korem-a#r1", "auction:korem-a#r1#end", "auction:korem-b#r1"} <= keys


def refused_rows(r: Rig) -> list[tuple[Any, ...]]:
    return [row for row in schedule_signals(r) if row[4] == "rejected"]


async def refused(
    r: Rig,
    up: Uploader,
    data: bytes,
    kind: str | None,
    *,
    status: int,
    row: int | None,
    field: str,
) -> dict[str, Any]:
    """Upload `data`, expect the refusal, and check that nothing held changed and that
    the refusal was journaled with the file's hash. Returns the problem document."""
    book = r.daemon.inbox.book
    held = set(r.daemon.journal.restore_book().held)
    journaled = len(refused_rows(r))
    got, problem, media = await up.send(data, kind)
    assert got == status, (data[:200], problem)
    assert media.startswith("application/problem+json")
    assert (problem.get("row"), problem.get("field")) == (row, field), problem
    assert r.daemon.inbox.book is book
    assert set(r.daemon.journal.restore_book().held) == held
    refusals = refused_rows(r)
    assert len(refusals) == journaled + 1, problem
    source, _, _, _, _, detail, _ = refusals[-1]
    assert source == "schedule:operator-1"
    assert problem["detail"] in detail
    if status != 413:  # refused unread: no hash of what was never read
        assert hashlib.sha256(data).hexdigest() in detail
    return problem  # type: ignore[no-any-return]


async def test_system_bad_rows_and_files_are_refused_whole_and_change_nothing(
    tmp_path: Path,
) -> None:
    async with schedule_rig(tmp_path) as (r, up):
        good = csv_file((at(r, 600), at(r, 1200), 10, "korem-held"))
        assert (await up.send(good))[0] == 201
        ok = (at(r, 60), at(r, 120), 5, "fine-1")  # a good row, before each bad one
        cap = r.loaded.config.grid.cap_kw
        csv_cases: list[tuple[tuple[object, ...], str]] = [
            (("soon", at(r, 300), 5, "x-1"), "start"),
            (("2026-11-23T16:00:00", at(r, 300), 5, "x-1"), "start"),
            ((at(r, 300), "later", 5, "x-1"), "end"),
            ((at(r, 300), at(r, 200), 5, "x-1"), "end"),
            ((at(r, -300), at(r, -100), 5, "x-1"), "end"),
            ((at(r, 200), at(r, 300), -5, "x-1"), "kw"),
            ((at(r, 200), at(r, 300), 0, "x-1"), "kw"),
            ((at(r, 200), at(r, 300), "nan", "x-1"), "kw"),
            ((at(r, 200), at(r, 300), "lots", "x-1"), "kw"),
            ((at(r, 200), at(r, 300), cap + 1, "x-1"), "kw"),
            ((at(r, 200), at(r, 300), 5, ""), "auction"),
            ((at(r, 200), at(r, 300), 5, "no spaces"), "auction"),
            ((at(r, 200), at(r, 300), 5, "x" * 129), "auction"),
            ((at(r, 200), at(r, 300), 5, "fine-1"), "auction"),  # the same reference twice
        ]
        for bad, field in csv_cases:
            problem = await refused(
                r, up, csv_file(ok, bad), "text/csv", status=400, row=2, field=field
            )
            assert problem["detail"].startswith(f"row 2 (line 3): {field}: "), problem
        row_json = {"start": at(r, 200), "end": at(r, 300), "kw": 5, "auction": "j-1"}
        cases: list[tuple[bytes, str | None, int, int | None, str, str]] = [
            (json.dumps([{**row_json, "kw": "5"}]).encode(), "application/json", 400, 1, "kw",
             "row 1: kw: must be a number"),
            (json.dumps([{**row_json, "colour": "red"}]).encode(), "application/json", 400, 1,
             "colour", "row 1: colour: not a schedule field"),
            (json.dumps({"rows": [{k: v for k, v in row_json.items() if k != "end"}]}).encode(),
             "application/json", 400, 1, "end", "row 1: end: missing"),
            (json.dumps([{**row_json, "reference": "j-2"}]).encode(), "application/json", 400, 1,
             "reference", "row 1: reference: give auction or reference"),
            (b"", "text/csv", 400, None, "body", "the schedule is empty"),
            (b"start,end,kw,auction\n", "text/csv", 400, None, "rows", "no rows"),
            (b"[]", "application/json", 400, None, "rows", "no rows"),
            (b"{not json", "application/json", 400, None, "body", "not JSON"),
            (b"start;end;kw;auction\n", "text/csv", 400, None, "header", "header: expected"),
            (b"start,end,kw,auction\n\xff\xfe\x00", "text/csv", 400, None, "body", "not UTF-8"),
            (good, "text/plain", 415, None, "Content-Type", "Content-Type must be"),
            (good, None, 415, None, "Content-Type", "Content-Type must be"),
            (good, "text/csv; charset=latin-1", 415, None, "Content-Type", "UTF-8"),
            (b"x" * (MAX_BYTES + 1), "text/csv", 413, None, "body", "the limit is"),
        ]  # fmt: skip
        many = [
            (at(r, 3600 + 60 * i), at(r, 3660 + 60 * i), 1, f"m{i}") for i in range(MAX_ROWS + 1)
        ]
        cases.append((csv_file(*many), "text/csv", 400, None, "rows", f"more than {MAX_ROWS}"))
        for data, kind, status, row, field, words in cases:
            problem = await refused(r, up, data, kind, status=status, row=row, field=field)
            assert words in problem["detail"], problem
        await r.step(2)
        state = await up.status()
        assert [s["id"] for s in state["signals"]] == ["auction:korem-held"]


async def test_system_overlaps_a_used_reference_and_roles_are_refused(tmp_path: Path) -> None:
    async with schedule_rig(tmp_path) as (r, up):
        good = csv_file((at(r, 600), at(r, 1200), 10, "korem-held"))
        assert (await up.send(good))[0] == 201
        ok = (at(r, 60), at(r, 120), 5, "fine-1")
        # With the held grant: 422, naming it and the row.
        late = csv_file(ok, (at(r, 1100), at(r, 1300), 5, "late-1"))
        problem = await refused(r, up, late, "text/csv", status=422, row=2, field="start")
        assert (problem["rows"], problem["held"]) == ([2], ["auction:korem-held"])
        assert "row 2 (line 3)" in problem["detail"]
        assert "korem-held" in problem["detail"]
        # Within one file: 422, naming both rows.
        twice = csv_file((at(r, 60), at(r, 200), 5, "a-1"), ok)
        problem = await refused(r, up, twice, "text/csv", status=422, row=1, field="start")
        assert problem["rows"] == [1, 2]
        assert "rows 1 and 2 overlap" in problem["detail"]
        # The same reference again: 409, an id names one grant.
        again = csv_file((at(r, 1800), at(r, 2400), 5, "korem-held"))
        problem = await refused(r, up, again, "text/csv", status=409, row=1, field="auction")
        assert "korem-held is already held" in problem["detail"]
        # Roles: a viewer may not, no token may not; neither reaches the door to journal.
        book, journaled = r.daemon.inbox.book, len(refused_rows(r))
        got, problem, _ = await up.send(csv_file(ok), role="viewer")
        assert (got, problem["detail"]) == (403, "this needs the operator role")
        got, _, _ = await up.send(csv_file(ok), role=None)
        assert got == 401
        assert r.daemon.inbox.book is book
        assert len(refused_rows(r)) == journaled
        # And a good upload still goes in afterwards.
        assert (await up.send(csv_file(ok)))[0] == 201
        assert set(r.daemon.inbox.book.held) == {"auction:korem-held", "auction:fine-1"}


@pytest.mark.parametrize("named", ["korem-c", "auction:korem-c"])
async def test_system_a_grid_cancel_withdraws_an_uploaded_grant(tmp_path: Path, named: str) -> None:
    """By the grant's full id, or by the bare reference the grid knows (no grid signal
    holds it): journaled as aimed at the uploaded grant."""
    async with schedule_rig(tmp_path) as (r, up):
        data = csv_file((at(r, -60), at(r, 3600), FULL_KW, "korem-c"))
        assert (await up.send(data))[0] == 201
        await r.run_until(lambda: r.farm.total_power_w() > 10_000, within_s=40)
        cancel = {"type": "cancel", "id": named, "revision": 2, "issued_at": iso(r.clock)}
        status, answer = await r.post(*r.signed(cancel))
        assert status == 202, answer
        assert answer["id"] == named
        assert "cancels revision 1" in answer["detail"]
        await r.run_until(lambda: r.farm.total_power_w() <= 1_000, within_s=40)
        assert limit_kw(r) == 1.0
        state = await up.status()
        assert state["signals"] == []
        assert "auction:korem-c" not in r.daemon.journal.restore_book().held
        [(sid, detail)] = r.daemon.journal.rows(
            "SELECT signal_id, detail FROM signals WHERE kind='cancel'"
        )
        assert sid == "auction:korem-c"
        assert ("named by its bare reference korem-c" in detail) == (named == "korem-c")


async def test_system_a_grid_curtailment_with_an_uploaded_reference_limits_the_draw(
    tmp_path: Path,
) -> None:
    """An operator's reference can never shadow the grid: a signed curtailment with the
    same id is admitted (both revisions) and binds; a grid cancel still withdraws the
    uploaded grant by its full id."""
    async with schedule_rig(tmp_path) as (r, up):
        data = csv_file((at(r, -60), at(r, 3600), FULL_KW, "KOREM-2026-001"))
        assert (await up.send(data))[0] == 201
        await r.run_until(lambda: r.farm.total_power_w() > 10_000, within_s=40)
        for revision, limit in ((1, 6.0), (2, 4.0)):
            cut = {"type": "curtailment", "id": "KOREM-2026-001", "revision": revision,
                   "issued_at": iso(r.clock), "limit_kw": limit, "deadline_s": 30}  # fmt: skip
            status, answer = await r.post(*r.signed(cut))
            assert (status, answer["status"]) == (202, "received"), answer
        await r.run_until(lambda: limit_kw(r) == 4.0, within_s=20)
        await r.run_until(lambda: r.farm.total_power_w() <= 4_000, within_s=40)
        held = r.daemon.inbox.book.held
        assert held["KOREM-2026-001"].signal.kind == "curtailment"
        assert held["auction:KOREM-2026-001"].uploaded_by == "operator-1"
        # The grid's bare cancel is its curtailment's; the full id reaches the upload.
        cancel = {"type": "cancel", "id": "auction:KOREM-2026-001", "revision": 2,
                  "issued_at": iso(r.clock)}  # fmt: skip
        status, answer = await r.post(*r.signed(cancel))
        assert status == 202, answer
        await r.run_until(lambda: limit_kw(r) == 1.0, within_s=20)
        assert set(r.daemon.inbox.book.held) == {"KOREM-2026-001"}


def cli_config(tmp_path: Path, port: int) -> Path:
    """A site config naming the rig's API port, for the command line."""
    data = site_dict(tmp_path, miners=2, api={**api_section(), "listen": f"127.0.0.1:{port}"})
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def curtaild(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_system_grants_import_from_the_command_line(tmp_path: Path) -> None:
    async with schedule_rig(tmp_path) as (r, _):
        assert r.daemon.api is not None
        assert r.daemon.api.port is not None
        config = cli_config(tmp_path, r.daemon.api.port)
        token = {"CURTAILD_TOKEN": API_TOKENS["operator"]}
        csv_path = tmp_path / "korem-2026-11-23.csv"
        csv_path.write_bytes(csv_file((at(r, 60), at(r, 600), 12.5, "korem-cli-1")))
        code, out, err = await curtaild("grants", "import", str(csv_path), "-c", str(config),
                                        env=token)  # fmt: skip
        assert code == 0, err
        assert "1 grant(s) imported" in out
        assert "korem-cli-1: 12.5 kW" in out
        held = r.daemon.inbox.book.held["auction:korem-cli-1"]
        assert held.uploaded_by == "operator-1"
        # JSON, sniffed from the content; the token from a file.
        json_path = tmp_path / "award"
        json_path.write_text(json.dumps([{"start": at(r, 600), "end": at(r, 900), "kw": 3,
                                          "auction": "korem-cli-2"}]))  # fmt: skip
        token_file = tmp_path / "token"
        token_file.write_text(API_TOKENS["admin"] + "\n")
        code, out, err = await curtaild("grants", "import", str(json_path), "-c", str(config),
                                        "--token-file", str(token_file), env={})  # fmt: skip
        assert code == 0, err
        assert r.daemon.inbox.book.held["auction:korem-cli-2"].uploaded_by == "admin-1"
        # Refused: the problem's detail, and a failing exit.
        code, out, err = await curtaild("grants", "import", str(csv_path), "-c", str(config),
                                        env=token)  # fmt: skip
        assert code == 1
        assert "refused (409)" in err
        assert "korem-cli-1 is already held" in err
        code, _, err = await curtaild("grants", "import", str(csv_path), "-c", str(config),
                                      env={"CURTAILD_TOKEN": API_TOKENS["viewer"]})  # fmt: skip
        assert (code, "refused (403)" in err) == (1, True)
        # No token: said before anything is sent.
        env = {"CURTAILD_TOKEN": ""}
        code, _, err = await curtaild("grants", "import", str(csv_path), "-c", str(config),
                                      env=env)  # fmt: skip
        assert code == 1
        assert "no token in the environment variable CURTAILD_TOKEN" in err
        # A daemon that is not there: said so, plainly.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        (tmp_path / "down").mkdir()
        down = cli_config(tmp_path / "down", closed)
        code, _, err = await curtaild("grants", "import", str(csv_path), "-c", str(down),
                                      env=token)  # fmt: skip
        assert code == 1
        assert f"cannot reach the operator API at http://127.0.0.1:{closed}" in err
        assert "is curtaild running" in err
        assert set(r.daemon.inbox.book.held) == {"auction:korem-cli-1", "auction:korem-cli-2"}


async def test_system_grants_import_over_tls_trusts_only_the_configured_certificate(
    tmp_path: Path,
) -> None:
    pki = Pki(tmp_path, "site")
    cert, key = (str(p) for p in pki.issue("server"))
    data = site_dict(tmp_path, miners=2, mode="surplus-only", api={**api_section(),
                     "tls": {"cert": cert, "key": key}})  # fmt: skip
    async with rig(load_site(data)) as r:
        assert r.daemon.api is not None
        assert r.daemon.api.port is not None
        port = r.daemon.api.port
        csv_path = tmp_path / "award.csv"
        csv_path.write_bytes(csv_file((at(r, 60), at(r, 600), 2, "korem-tls")))
        token = {"CURTAILD_TOKEN": API_TOKENS["operator"]}
        config = tmp_path / "site.yaml"
        data["api"]["listen"] = f"127.0.0.1:{port}"
        config.write_text(yaml.safe_dump(data))
        code, out, err = await curtaild("grants", "import", str(csv_path), "-c", str(config),
                                        env=token)  # fmt: skip
        assert code == 0, err
        assert "korem-tls" in out
        # A certificate the config does not name (even from the same CA): refused.
        other_cert, other_key = (str(p) for p in pki.issue("impostor"))
        data["api"]["tls"] = {"cert": other_cert, "key": other_key}
        config.write_text(yaml.safe_dump(data))
        code, _, err = await curtaild("grants", "import", str(csv_path), "-c", str(config),
                                      env=token)  # fmt: skip
        assert code == 1
        assert "a certificate other than api.tls.cert's" in err
        assert set(r.daemon.inbox.book.held) == {"auction:korem-tls"}
