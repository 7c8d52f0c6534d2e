"""What the operator API's compliance view asks of the energy account: today's and this
month's figures, the grants' utilisation, excess events, miners on unapproved pools and the
journal's chain state, as one dict (GET /api/v1/compliance's shape; the API validates it
against its models before answering).

A Protocol, so that the API needs nothing of the account but this one call, and a test can
stand in for the account at the API boundary."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol


class ComplianceError(Exception):
    """The source cannot answer now (its journal cannot be read, say): the API answers 503."""


class ComplianceSource(Protocol):
    def compliance(self, now: datetime) -> Mapping[str, Any]:
        """The figures as of `now` (the daemon's clock: "today" and "this month" are UTC).

        Called from a worker thread, one call at a time, so that a slow read never holds up
        the control loop: open your own (read-only) connection to the journal. Raise
        ComplianceError, OSError or sqlite3.Error when the figures cannot be read."""
        ...
