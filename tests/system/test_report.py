"""`curtaild report`: the journal's signal history exported as JSON and CSV, from the
journal a real daemon wrote while it met a curtailment and refused a forged signal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from controller import cli
from controller.intake import wire
from controller.record.report import FIELDS
from tests.conftest import load_site, site_dict
from tests.system.harness import rig

pytestmark = pytest.mark.system


async def test_report_exports_every_signal_with_how_its_deadline_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = site_dict(tmp_path, miners=4)
    async with rig(load_site(data)) as r:
        limit_kw = round((r.sup.draw.measured_w or 0) / 1000 * 0.5, 1)
        await r.post(*r.signed(r.curtailment(limit_kw, deadline_s=10)))
        await r.settled("evt-0017#r1", within_s=20)
        body, headers = r.signed(r.curtailment(1.0, revision=2))
        headers[wire.SIGNATURE_HEADER] = "0" * 64  # forged: refused, and still evidence
        status, _ = await r.post(body, headers)
        assert status == 401
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    capsys.readouterr()  # the daemon's own log lines

    assert cli.main(["report", "-c", str(site)]) == 0
    rows = json.loads(capsys.readouterr().out)["signals"]
    met = [x for x in rows if x["signal_id"] == "evt-0017" and x["revision"] == 1]
    assert len(met) == 1
    assert met[0]["verdict"] == "received"
    assert met[0]["status"] == "reached"
    assert met[0]["limit_kw"] == limit_kw
    assert 0 <= met[0]["time_to_target_s"] <= 10
    assert met[0]["measured_by"] == "firmware"
    refused = [x for x in rows if x["verdict"] == "rejected"]
    assert len(refused) == 1
    assert refused[0]["status"] is None  # a refused signal binds nothing

    assert cli.main(["report", "-c", str(site), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == len(rows)
    assert tuple(table[0]) == FIELDS
    assert {t["status"] for t in table} >= {"reached", ""}

    assert cli.main(["report", "-c", str(site), "--since", "2100-01-01"]) == 0
    assert json.loads(capsys.readouterr().out)["signals"] == []
    assert cli.main(["report", "-c", str(site), "--since", "yesterday"]) == 2
    assert "--since: 'yesterday' is not an ISO 8601 instant" in capsys.readouterr().err


def test_report_without_a_journal_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(site_dict(tmp_path, miners=2)))
    assert cli.main(["report", "-c", str(site)]) == 1
    assert "no journal there" in capsys.readouterr().err
