"""ConfigError, the one error a bad config raises, and how a pydantic error is worded in it."""

from __future__ import annotations

from pydantic_core import ErrorDetails


class ConfigError(Exception):
    """The config is wrong; `problems` lists every problem with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))
        self.source = source
        self.problems = problems


def describe(error: ErrorDetails) -> str:
    """One validation error as `path.into[3].the_file: message`."""
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (typo?)"
    return f"{loc or '<top>'}: {message}"
