"""curtaild run | sim | demo | check-config | report | verify | check-export | evidence."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import re
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller import cli_evidence, logs
from controller.clock import SystemClock
from controller.config import ConfigError, Loaded, check_listen, load

EXIT_CONFIG = 2
# The daemon stopped to start again (it adopts a synchronized wall clock): EX_TEMPFAIL,
# which the unit's Restart=on-failure restarts.
EXIT_RESTART = 75
TOKEN_ENV = "CURTAILD_TOKEN"  # noqa: S105 - a variable's name; the token is never an argument


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curtaild", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the controller (the systemd service)")
    run.add_argument("-c", "--config", type=Path, required=True)
    sim = sub.add_parser("sim", help="run a simulated farm on loopback until stopped")
    sim.add_argument("-c", "--config", type=Path, required=True)
    sim.add_argument(
        "--control",
        default=None,
        metavar="HOST:PORT",
        help="serve the simulator's control API (overrides simulation.control_listen)",
    )
    check = sub.add_parser("check-config", help="validate a site config and exit")
    check.add_argument("-c", "--config", type=Path, required=True)
    report = sub.add_parser("report", help="export the journal's evidence (signals, energy)")
    report.add_argument(
        "kind", nargs="?", choices=("signals", "energy"), default="signals", help="what to export"
    )
    report.add_argument("-c", "--config", type=Path, required=True, help="site config")
    report.add_argument("--from", dest="start", default=None, help="energy: from (ISO 8601)")
    report.add_argument("--to", dest="end", default=None, help="energy: to, exclusive")
    report.add_argument(
        "--format", choices=("json", "csv", "html"), default="json", help="html: energy only"
    )
    report.add_argument(
        "--since", default=None, help="only from this instant on (ISO 8601, e.g. 2026-11-23)"
    )
    report.add_argument(
        "--out", type=Path, default=None, help="write FILE (and FILE.sig with a site key)"
    )
    report.add_argument(
        "--unverified",
        action="store_true",
        help="--out: sign even if the journal's chain does not verify (the statement says so)",
    )
    demo = sub.add_parser("demo", help="simulated farm + broker + daemon + scripted grid")
    demo.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="the simulated farm (default: the bundled demo farm)",
    )
    demo.add_argument("--json", action="store_true", help="print one JSON summary")
    demo.add_argument(
        "--scenario",
        choices=("day", "winter", "openadr"),
        default="day",
        help="day: a Kazakhstan surplus day; winter: the same farm at -35 °C; openadr: "
        "dispatched by an OpenADR 2.0b VTN",
    )
    demo.add_argument("--mqtt-url", default=None, help="use this broker instead of an embedded one")
    demo.add_argument(
        "--api",
        default="127.0.0.1:8481",
        type=_listen,
        metavar="HOST:PORT",
        help="where the dashboard and operator API listen (a free port if taken)",
    )
    token = sub.add_parser("token", help="make an operator API token and its config entry")
    token.add_argument("--name", required=True, help="who holds it (journaled with each change)")
    token.add_argument("--role", choices=("viewer", "operator", "admin"), required=True)
    evidence = cli_evidence.add_commands(sub)
    grants = sub.add_parser("grants", help="auction schedules: the surplus the farm won")
    grants_sub = grants.add_subparsers(dest="grants_command", required=True)
    upload = grants_sub.add_parser(
        "import",
        help="upload a schedule (CSV or JSON) to the running daemon: each row becomes a grant",
    )
    upload.add_argument("file", type=Path, help="start,end,kw,auction rows (CSV or JSON)")
    upload.add_argument("-c", "--config", type=Path, required=True, help="site config")
    upload.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="a file holding an operator's API token (default: the --token-env variable)",
    )
    upload.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        metavar="NAME",
        help=f"the environment variable holding the token (default {TOKEN_ENV})",
    )
    upload.add_argument(
        "--format",
        choices=("csv", "json"),
        default=None,
        help="default: by the file's extension, else by its first character",
    )
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run,
        "sim": _sim,
        "check-config": _check,
        "demo": _demo,
        "report": _report,
        "token": _token,
        **evidence,
        "grants": _grants,
    }
    return handlers[args.command](args)


def _load(path: Path, *, resolve_secrets: bool = True) -> Loaded | None:
    try:
        return load(path, resolve_secrets=resolve_secrets)
    except ConfigError as err:
        _problems(err)
        return None


def _problems(err: ConfigError) -> None:
    print(f"{err.source}: {len(err.problems)} problem(s)", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)


def _load_checked(path: Path) -> Loaded | None:
    """The config, with a simulated farm's `simulation:` section checked too (refused at
    load by `run` as by `check-config`), its problems printed; None if refused."""
    loaded = _load(path)
    if loaded is None or loaded.config.simulation is None:
        return loaded
    from demo.simulation import simulation  # noqa: PLC0415 - only a simulated farm's config

    try:
        simulation(loaded)
    except ConfigError as err:
        _problems(err)
        return None
    return loaded


def _check(args: argparse.Namespace) -> int:
    loaded = _load_checked(args.config)
    if loaded is None:
        return EXIT_CONFIG
    config = loaded.config
    drivers = Counter(m.driver for m in loaded.miners)
    containers = Counter(m.container for m in loaded.miners)
    rated_kw = sum(m.rated_power_w for m in loaded.miners) / 1000
    print(f"{loaded.origin}: ok")
    print(
        f"  site {config.site.id}: {config.grid.mode.value}, cap {config.grid.cap_kw:g} kW, "
        f"base allowance {config.grid.base_allowance_kw:g} kW, "
        f"margin {config.grid.margin_kw:g} kW"
    )
    print(
        f"  {len(loaded.miners)} miners, {rated_kw:g} kW rated: "
        + ", ".join(f"{n} {d}" for d, n in sorted(drivers.items()))
    )
    print("  containers: " + ", ".join(f"{c} ({n})" for c, n in sorted(containers.items())))
    print("  signal sources: " + ", ".join(s.id for s in config.signals.sources))
    return 0


def _run(args: argparse.Namespace) -> int:
    loaded = _load_checked(args.config)
    if loaded is None:
        return EXIT_CONFIG
    logs.configure(loaded.config.logging.level, loaded.config.logging.format)
    from controller.adapters.systemd import Notifier  # noqa: PLC0415
    from controller.app import Daemon  # noqa: PLC0415 - keep check-config fast

    async def daemon() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # graceful: finish, flush, then exit
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP re-reads the listeners' TLS files. Its handler is in place before the
        # daemon is built (a large fleet takes a while): the default action would stop it.
        built: list[Daemon] = []
        loop.add_signal_handler(signal.SIGHUP, lambda: [d.reload_tls() for d in built])
        notifier = Notifier.from_env()
        running = Daemon(loaded, SystemClock(), tune_gc=True, notifier=notifier)
        built.append(running)
        await running.serve(stop)
        if running.supervisor.restart_reason is not None:
            print(f"curtaild: restarting: {running.supervisor.restart_reason}", file=sys.stderr)
            return EXIT_RESTART
        return 0

    return run_loop(daemon())


def _report(args: argparse.Namespace) -> int:
    from controller.record.report import ReportError, render, signal_history  # noqa: PLC0415

    loaded = _load(args.config, resolve_secrets=False)
    if loaded is None:
        return EXIT_CONFIG
    if args.format == "html" and args.kind != "energy":
        print("--format html: only the energy report is rendered as HTML", file=sys.stderr)
        return EXIT_CONFIG
    try:
        since = _instant("--since", args.since)
        if args.kind == "energy":
            text = _energy(args, loaded)
        else:
            text = render(signal_history(loaded.config.journal.path, since), args.format)
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    except ReportError as err:
        print(str(err), file=sys.stderr)
        return 1
    return _emit(text, args, loaded)


def _energy(args: argparse.Namespace, loaded: Loaded) -> str:
    """The energy account from --from (default: today 00:00 UTC) to --to (default: now)."""
    from controller.record import energy_report as energy  # noqa: PLC0415
    from controller.record.energy_html import render_energy_html  # noqa: PLC0415

    end = _instant("--to", args.end) or datetime.now(UTC)
    start = _instant("--from", args.start) or end.replace(hour=0, minute=0, second=0, microsecond=0)
    report = energy.energy_report(
        loaded.config.journal.path, start, end, site_id=loaded.config.site.id
    )
    if args.format == "html":
        return render_energy_html(report)
    return energy.render_energy(report, args.format)


def _emit(text: str, args: argparse.Namespace, loaded: Loaded) -> int:
    """A report to stdout, or to --out FILE, signed (FILE.sig) with the site's key."""
    out: Path | None = getattr(args, "out", None)  # a report without --out prints
    if out is None:
        # Journaled text may hold what UTF-8 cannot (escaped lone surrogates): replaced.
        sys.stdout.buffer.write(text.encode("utf-8", "replace"))
        sys.stdout.flush()
        return 0
    return cli_evidence.write_export(text, out, loaded, unverified=args.unverified)


def _instant(flag: str, text: str | None) -> datetime | None:
    """An ISO 8601 instant or date (UTC unless it says otherwise); ValueError names it."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)  # 3.11 reads a trailing Z
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not an ISO 8601 instant") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _simulator_missing(command: str, extra: str) -> bool:
    """The simulated farm's protocol libraries are an extra, not the daemon's dependencies."""
    if importlib.util.find_spec("grpclib") is not None:
        return False
    print(
        f"curtaild {command} runs the simulated farm: pip install 'curtaild[{extra}]'",
        file=sys.stderr,
    )
    return True


def _sim(args: argparse.Namespace) -> int:
    if _simulator_missing("sim", "sim"):
        return EXIT_CONFIG
    loaded = _load(args.config, resolve_secrets=False)
    if loaded is None:
        return EXIT_CONFIG
    logs.configure(loaded.config.logging.level, "console")
    from demo.farm import farm_from_config  # noqa: PLC0415
    from demo.simulation import simulation  # noqa: PLC0415
    from sim.control import SimControl  # noqa: PLC0415

    try:
        listen = args.control or simulation(loaded).control_listen
    except ConfigError as err:
        _problems(err)
        return EXIT_CONFIG

    async def simulate() -> None:
        clock = SystemClock()
        farm = farm_from_config(loaded, clock.time)
        async with farm:
            control = None
            if listen:
                host, _, port = listen.rpartition(":")
                control = SimControl(farm, host.strip("[]"), int(port))
                await control.start()
                print(f"control API on http://{host}:{control.port}/v1/miners", flush=True)
            print(f"simulating {len(farm.miners)} miners; stop with Ctrl-C", flush=True)
            try:
                await asyncio.Event().wait()
            finally:
                if control is not None:
                    await control.stop()

    return run_until_signalled(simulate)


def _demo(args: argparse.Namespace) -> int:
    if args.mqtt_url is None and importlib.util.find_spec("amqtt") is None:
        print(
            "curtaild demo embeds an MQTT broker: pip install 'curtaild[demo]' "
            "(or give --mqtt-url for a broker you run)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if _simulator_missing("demo", "demo"):
        return EXIT_CONFIG
    from demo.run import run_demo  # noqa: PLC0415

    return run_loop(
        run_demo(
            config=args.config,
            as_json=args.json,
            mqtt_url=args.mqtt_url,
            scenario=args.scenario,
            api_listen=args.api,
        )
    )


def _listen(value: str) -> str:
    try:
        return check_listen(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _token(args: argparse.Namespace) -> int:
    """A new random token: printed once (give it to its holder); the config keeps only
    its SHA-256 under api.tokens."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.name):
        print(f"--name {args.name!r}: letters, digits, '.', '_' or '-' only", file=sys.stderr)
        return EXIT_CONFIG
    value = secrets.token_hex(32)
    digest = hashlib.sha256(value.encode()).hexdigest()
    print(f"token for {args.name} ({args.role}), shown once: {value}")
    print("add to the site config under api.tokens:")
    print(f"  - {{name: {json.dumps(args.name)}, role: {args.role}, sha256: {digest}}}")
    return 0


def _grants(args: argparse.Namespace) -> int:
    """`curtaild grants import FILE`: POST it to the daemon's operator API."""
    from controller.adapters.operator_api import client  # noqa: PLC0415

    loaded = _load(args.config, resolve_secrets=False)
    if loaded is None:
        return EXIT_CONFIG
    try:
        data = args.file.read_bytes()
    except OSError as err:
        print(f"{args.file}: {err.strerror or err}", file=sys.stderr)
        return EXIT_CONFIG
    kind = args.format or _schedule_format(args.file, data)
    try:
        where = client.target(loaded.config.api)
        bearer = client.token(env=args.token_env, file=args.token_file)
        media = "text/csv" if kind == "csv" else "application/json"
        status, answer = asyncio.run(
            client.post(where, "/api/v1/grants/schedule", data, media, bearer)
        )
    except client.ClientError as err:
        print(f"curtaild grants import: {err}", file=sys.stderr)
        return 1
    if status != 201 or not isinstance(answer, dict):  # noqa: PLR2004
        detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
        print(f"{args.file}: refused ({status}): {str(detail)[:2000]}", file=sys.stderr)
        return 1
    grants = answer.get("grants", [])
    print(f"{args.file}: {len(grants)} grant(s) imported, sha256 {answer.get('sha256')}")
    for g in grants:
        print(f"  {g['id']}: {g['granted_kw']:g} kW from {g['start']} to {g['end']}")
    return 0


def _schedule_format(path: Path, data: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".json"):
        return suffix[1:]
    return "json" if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"[", b"{") else "csv"


async def _returning_zero(main: Callable[[], Awaitable[None]]) -> int:
    await main()
    return 0


def run_until_signalled(main: Callable[[], Awaitable[None]]) -> int:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; a signal is a clean exit."""

    async def guarded() -> int:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return 0
        return 0

    return run_loop(guarded())


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where available: the fan-out is loop-bound."""
    try:
        import uvloop  # noqa: PLC0415

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner, contextlib.suppress(KeyboardInterrupt):
        return runner.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
