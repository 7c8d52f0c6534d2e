"""The operator API fuzzed from its own /openapi.json with schemathesis: no request, valid
or not, gets a 5xx, and every answer matches the document (status, content type, body).

The daemon (with its simulated farm) runs in a thread with its own event loop, because
schemathesis calls the API synchronously. Its clock is fake and never moves: the fuzzer
exercises the API, and the control loop stays idle between its requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from controller.adapters.operator_api.routes import ROUTES
from controller.app import Daemon
from controller.clock import FakeClock
from demo.farm import farm_from_config
from tests.conftest import API_TOKENS, KEY, KEY_ENV, api_section, load_site, site_dict

pytestmark = pytest.mark.system

START_TIMEOUT_S = 30
MAX_EXAMPLES = 30  # per operation; about 20 operations
# A well-formed request the site's rules refuse is a 422 (an expiry already passed, an
# override above the grid's limit): documented, and not a rejection of valid data.
ACCEPTED = ["2xx", "401", "403", "404", "409", "422"]
# An auction schedule's rows are judged against the clock and the site's cap as well as
# their schema (an award that has ended, or is above the cap): the issue answers such a
# row with a 400 naming it, so a schema-valid upload may be a 400 there, and only there.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        "operations": [
            {
                "include-path": "/api/v1/grants/schedule",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
            }
        ],
    }
)


class LiveDaemon:
    """A daemon and its farm on a private event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        self.loaded = load_site(site_dict(tmp, miners=6, api=api_section()))
        self.loop = asyncio.new_event_loop()
        self.port: int | None = None
        self._up = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzzed-daemon", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as err:  # handed to the test thread
            self._error = err
            self._up.set()

    async def _serve(self) -> None:
        clock = FakeClock()
        self._stop = asyncio.Event()
        farm = farm_from_config(self.loaded, clock.time)
        async with farm, Daemon(self.loaded, clock) as daemon:
            assert daemon.api is not None
            self.port = daemon.api.port
            self._up.set()
            await self._stop.wait()

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._up.wait(START_TIMEOUT_S) or self._error is not None:
            raise RuntimeError(f"the daemon did not start: {self._error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY.decode())
        with LiveDaemon(tmp_path_factory.mktemp("fuzz")) as daemon:
            yield daemon


FUZZED = [
    f"{r.method} {r.path}"
    for r in ROUTES
    if r.path != "/api/v1/stream"  # never ends; the dashboard test reads it
]


@pytest.mark.parametrize("label", FUZZED)
def test_system_api_fuzz_no_5xx_and_answers_match_the_schema(live: LiveDaemon, label: str) -> None:
    """Valid and invalid requests (schemathesis generates both), with the admin's token."""
    schema = schemathesis.openapi.from_url(
        f"http://127.0.0.1:{live.port}/openapi.json", config=CONFIG
    )
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    auth = {"Authorization": f"Bearer {API_TOKENS['admin']}"}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=auth)

    fuzz()
