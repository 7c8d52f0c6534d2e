"""What the operator API's parts share: problem documents and the bounds of its inputs."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from pydantic import TypeAdapter

from controller.adapters import listener
from controller.adapters.operator_api import models as m

MAX_PAGE = 1000
MAX_OFFSET = 10**9
MAX_SEQ = 2**62  # SQLite's rowid is a signed 64-bit integer
ISO = {"type": "string", "format": "date-time"}
REASON: TypeAdapter[str] = TypeAdapter(m.Reason)
TITLES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "body too large",
    415: "unsupported media type",
    422: "refused",
    500: "internal error",
    503: "unavailable",
}


def problem(
    status: int,
    detail: str,
    field_name: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    return listener.problem(status, detail, TITLES, field_name, extra)


class ProblemError(Exception):
    """Answered as a problem document by the server's middleware."""

    def __init__(self, status: int, detail: str, field_name: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field_name
