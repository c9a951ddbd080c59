"""The codebase keeps the shape its layout promises: modules use each other's public names only,
hold no per-process state in module globals, and stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import watchd

PACKAGE = Path(watchd.__file__).parent
MAX_MODULE_LINES = 800  # past this a module holds more than one role: split it


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def shown(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_module(dotted: str) -> bool:
    base = PACKAGE.parent / dotted.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def private_uses(path: Path, text: str | None = None) -> list[str]:
    """`from watchd.x import _y`, `import watchd._x`, and `x._y` where x is a watchd module."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    found: list[str] = []
    modules_here: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "watchd":
            if any(private(part) for part in node.module.split(".")):
                found.append(f"{shown(path)}:{node.lineno}: from {node.module} import …")
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{shown(path)}:{node.lineno}: from {node.module} import {alias.name}")
                elif is_module(f"{node.module}.{alias.name}"):
                    modules_here.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "watchd":
                    if any(private(part) for part in alias.name.split(".")):
                        found.append(f"{shown(path)}:{node.lineno}: import {alias.name}")
                    modules_here.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules_here:
                found.append(f"{shown(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [use for path in modules() for use in private_uses(path)]
    assert found == [], "make the name public (no leading _) or keep its use in its own module:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_private_use() -> None:
    """The check above must be able to fail."""
    sample = (
        "from watchd.notify.http_client import _connect_failure\n"
        "from watchd.notify import http_client\n"
        "http_client._connect_failure\n"
        "import watchd.upkeep\n"
        "watchd.upkeep._Sleep\n"
        "from watchd.notify.http_client import HttpClient\n"
        "HttpClient()._session\n"  # an object's own attribute: not a module's private name
    )
    uses = private_uses(PACKAGE / "sample.py", sample)
    assert [u.split(": ", 1)[1] for u in uses] == [
        "from watchd.notify.http_client import _connect_failure",
        "http_client._connect_failure",
        "watchd.upkeep._Sleep",
    ]


def global_statements(path: Path, text: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    return [
        f"{shown(path)}:{node.lineno}: global {', '.join(node.names)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]


def test_no_module_keeps_runtime_state_in_a_global() -> None:
    """State of a run (a client session, the tokens in flight) belongs to the object that runs it
    (the daemon, a command), which passes it on: two daemons in one process (tests) must not share
    it, and what the owner closes must not outlive it."""
    found = [g for path in modules() for g in global_statements(path)]
    assert found == [], "\n".join(found)
    sample = "_session = None\ndef get():\n    global _session\n    return _session\n"
    assert global_statements(PACKAGE / "sample.py", sample) == ["watchd/sample.py:3: global _session"]


def sql_statements(path: Path, text: str | None = None) -> list[str]:
    """Calls of execute/executemany/executescript with SQL written in place."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    return [
        f"{shown(path)}:{node.lineno}: {ast.unparse(node)[:80]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("execute", "executemany", "executescript")
        and node.args
        and isinstance(node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp)
    ]


def test_sql_lives_in_the_store() -> None:
    """A schema change touches watchd/store only: every statement is behind a function there."""
    outside = [p for p in modules() if p.parent.name != "store"]
    found = [stmt for path in outside for stmt in sql_statements(path)]
    assert found == [], "move these behind a function in watchd/store/:\n" + "\n".join(found)
    sample = 'conn.execute("SELECT 1")\nconn.execute(f"DELETE FROM {t}")\nprogram.execute(ctx)\n'
    assert len(sql_statements(PACKAGE / "sample.py", sample)) == 2


def test_modules_stay_small() -> None:
    big = [f"{shown(p)}: {n} lines" for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert big == [], f"over {MAX_MODULE_LINES} lines: split by role\n" + "\n".join(big)
