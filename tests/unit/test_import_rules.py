"""DESIGN.md's import rules, enforced: the rooms of the house and the doors between them.

The core is pure; drivers never import the controller; the simulated farm (sim/) imports
only drivers' types and the protocol libraries; adapters never import the daemon (app);
third-party protocol libraries each stay in their one room; and outside the core no two
files import each other, directly or round a circle. Imports under `if TYPE_CHECKING:` are
for the type checker only and are left out (they never run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "drivers", "sim", "demo")
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


# The simulator serves what the drivers read: the driver types, and the register maps
# that describe a PDU's or meter's registers (the same shipped YAML a site points at).
SIM_MAY_USE = {"drivers.types", "drivers.modbus_map", "drivers.shipped"}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, typing: bool = False) -> set[str]:
    """The modules a file imports when it runs (with `typing`, for the type checker too), as
    dotted names; `from pkg import mod` names `pkg.mod` when that is a module of ours, so
    the graph is between files."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    return _imported(ast.parse(path.read_text(), str(path)), package, typing=typing)


def _imported(tree: ast.AST, package: str, *, typing: bool) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree) if typing else _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}"):
                    found.add(f"{base}.{alias.name}")
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def allowed(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def users_of(library: str) -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for folder in PACKAGES
        for p in modules(folder)
        if any(allowed(n, {library}) for n in imports(p))
    }


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


def test_drivers_never_import_controller_sim_or_demo() -> None:
    bad = {
        (str(p.relative_to(ROOT)), name)
        for p in modules("drivers")
        for name in imports(p)
        if allowed(name, {"controller", "sim", "demo"})
    }
    assert bad == set()


def test_the_simulated_farm_imports_only_driver_types_and_protocol_libraries() -> None:
    bad = {
        (str(p.relative_to(ROOT)), name)
        for p in modules("sim")
        for name in imports(p)
        if allowed(name, {"controller", "demo"})
        or (allowed(name, {"drivers"}) and not allowed(name, SIM_MAY_USE))
    }
    assert bad == set()


def test_the_product_never_imports_the_demo_or_the_simulator() -> None:
    # The daemon runs without the simulated farm: only the `sim` and `demo` commands reach
    # it, and they import it inside the command, not at the top of a product module.
    bad = {
        (str(p.relative_to(ROOT)), name)
        for folder in ("controller", "drivers")
        for p in modules(folder)
        for name in _top_level_imports(p)
        if allowed(name, {"sim", "demo"})
    }
    assert bad == set()


def _top_level_imports(path: Path) -> set[str]:
    """Imports that run when the module is imported: its body's, and those under a
    module-level `if` or `try` (not inside a function, where the CLI imports on demand)."""
    found: set[str] = set()
    pending: list[ast.stmt] = list(ast.parse(path.read_text(), str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.If):
            pending.extend([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            pending.extend([*node.body, *node.orelse, *node.finalbody])
            pending.extend(s for h in node.handlers for s in h.body)
    return found


# Which rooms of the daemon each room may not enter, for the type checker either: an
# adapter that takes the daemon "only for typing" is still coupled to its insides.
ROOMS_NEVER = {
    "controller/adapters": {"controller.app", "controller.loop"},
    "controller/loop": {"controller.app", "controller.adapters"},
    "controller/record": {
        "controller.app",
        "controller.adapters",
        "controller.loop",
        "controller.intake",
    },
    "controller/intake": {"controller.app", "controller.adapters", "controller.loop"},
}


def test_each_room_stays_out_of_the_rooms_after_it() -> None:
    bad = {
        (str(p.relative_to(ROOT)), name)
        for room, never in ROOMS_NEVER.items()
        for p in modules(room)
        for name in imports(p, typing=True)
        if allowed(name, never)
    }
    assert bad == set()


def test_the_room_rule_sees_an_import_made_only_for_typing() -> None:
    # The old adapters took the whole Daemon under `if TYPE_CHECKING:`; the rule must see it.
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from controller.app import Daemon\n"
    )
    assert "controller.app" in _imported(tree, "controller.adapters", typing=True)
    assert "controller.app" not in _imported(tree, "controller.adapters", typing=False)


def test_only_the_modbus_transport_and_simulator_import_pymodbus() -> None:
    # Both exist and use it: an empty set would pass a `<=` and prove nothing.
    assert users_of("pymodbus") == {"drivers/transport/modbus.py", "sim/modbus.py"}


def test_only_the_mqtt_adapter_imports_aiomqtt() -> None:
    assert users_of("aiomqtt") == {"controller/adapters/mqtt_signals.py"}


def test_only_the_openadr_adapter_and_its_demo_import_openleadr() -> None:
    # openleadr pulls lxml, signxml and APScheduler: kept at the VEN's edge and the demo's VTN.
    assert users_of("openleadr") == {
        "controller/adapters/openadr.py",
        "controller/adapters/openadr_link.py",
        "demo/openadr.py",
    }


def test_grpclib_lives_in_the_simulator_alone() -> None:
    users = users_of("grpclib")
    assert users, "the Braiins OS+ simulator serves gRPC with grpclib"
    assert all(u.startswith("sim/") for u in users), users


def _graph() -> dict[str, set[str]]:
    ours = {module_name(p): p for folder in PACKAGES for p in modules(folder)}
    return {
        name: {n for n in imports(path) if n in ours and n != name} for name, path in ours.items()
    }


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in the graph, or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return list(err.args[1])
    return None


def test_no_import_circles_outside_the_core() -> None:
    # The core's own files may lean on each other (model and safety do); nothing else may.
    core = {"controller.core"}
    graph = {
        name: {n for n in uses if not (allowed(name, core) and allowed(n, core))}
        for name, uses in _graph().items()
    }
    assert _circle(graph) is None


def test_the_circle_finder_finds_a_circle() -> None:
    # The rule above passes on an empty answer; prove the finder would see one.
    circle = _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert circle is not None
    assert set(circle) == {"a", "b", "c"}
