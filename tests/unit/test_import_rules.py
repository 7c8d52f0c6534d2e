"""DESIGN.md's import rules, enforced: the core is pure; drivers never import controller."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE_ALLOWED = {
    "__future__",
    "enum",
    "dataclasses",
    "datetime",
    "collections",
    "typing",
    "math",
    "itertools",
    "functools",
    "controller.core",
    "drivers.types",
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def allowed(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_core_imports_only_stdlib_and_driver_types() -> None:
    bad = {
        (p.name, name)
        for p in modules("controller/core")
        for name in imports(p)
        if not allowed(name, CORE_ALLOWED)
    }
    assert bad == set()


def test_core_never_reads_the_clock() -> None:
    for path in modules("controller/core"):
        text = path.read_text()
        for forbidden in (".now(", "time.time", "monotonic(", "utcnow", "asyncio"):
            assert forbidden not in text, f"{path.name} uses {forbidden}"


def test_drivers_never_import_controller() -> None:
    bad = {
        (str(p.relative_to(ROOT)), name)
        for p in modules("drivers")
        for name in imports(p)
        if allowed(name, {"controller"})
    }
    assert bad == set()


def test_only_the_modbus_transport_and_simulator_import_pymodbus() -> None:
    users = {
        str(p.relative_to(ROOT))
        for folder in ("controller", "drivers")
        for p in modules(folder)
        if any(allowed(n, {"pymodbus"}) for n in imports(p))
    }
    # Both exist and use it: an empty set would pass a `<=` and prove nothing.
    assert users == {"drivers/transport/modbus.py", "drivers/sim/modbus.py"}


def test_only_the_mqtt_adapter_imports_aiomqtt() -> None:
    users = {
        str(p.relative_to(ROOT))
        for folder in ("controller", "drivers")
        for p in modules(folder)
        if any(allowed(n, {"aiomqtt"}) for n in imports(p))
    }
    assert users == {"controller/adapters/mqtt_signals.py"}
