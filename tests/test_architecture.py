"""The house rules, read from the source: arrows run one way (entry -> handlers
-> core -> pbx / storage), no import circles, sandbox/ only behind the command
line. Every import counts, a function's own included; only imports under
`if TYPE_CHECKING:` are left out (they never run). See docs/architecture.md."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("bot", "handlers", "storage", "pbx")
SKIPPED = ("storage/migrations",)  # alembic's scripts: run by alembic, not imported


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, *, package: bool = False, known: set[str] | None = None) -> set[str]:
    """The absolute names of the modules `module` imports, wherever in the file
    (functions too), but not under `if TYPE_CHECKING:`. `from a import b` counts
    as a.b when that is a module of `known`, else as a."""
    known = known or set()
    found: set[str] = set()
    here = module.split(".") if package else module.split(".")[:-1]  # the package relative imports start in

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            for alias in node.names:
                child = f"{parent}.{alias.name}"
                found.add(child if child in known else parent)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def product_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every product module by its dotted name: (file, is a package's __init__)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for top in PRODUCT:
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root)
            if any(relative.as_posix().startswith(skip + "/") for skip in SKIPPED):
                continue
            parts = relative.with_suffix("").parts
            package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """Each product module -> every module it imports (product or not)."""
    return _graph(ROOT)


@functools.cache
def _graph(root: Path) -> dict[str, set[str]]:
    modules = product_modules(root)
    known = set(modules)
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, package=package, known=known)
        for name, (path, package) in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None. Only edges between keys of `graph` count."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = walk(start)
            if found:
                return found
    return None


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _core(name: str) -> bool:
    """bot/ but its entry room: config, services, plans, routing, text."""
    return _under(name, "bot") and not _under(name, "bot.entry")


def _offences(rule) -> str:
    """Every `module imports target` breaking a rule, one a line ("" when none)."""
    graph = import_graph()
    return "\n".join(
        sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets if rule(m, t))
    )


# ---------------------------------------------------------------------- the rules


def test_no_import_circle_among_product_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_only_the_entry_room_imports_sandbox():
    found = _offences(lambda m, t: _under(t, "sandbox") and not _under(m, "bot.entry"))
    assert not found, found


def test_the_core_imports_neither_handlers_nor_the_entry_room():
    found = _offences(lambda m, t: _core(m) and _under(t, "handlers", "bot.entry"))
    assert not found, found


def test_the_routing_rules_are_the_floor_of_the_core():
    """bot/plans reads bot/routing/rules.py, so rules may import nothing of ours but pbx."""
    found = _offences(lambda m, t: m == "bot.routing.rules" and _under(t, "bot", "handlers", "storage"))
    assert not found, found


def test_handlers_do_not_import_the_entry_room():
    found = _offences(lambda m, t: _under(m, "handlers") and _under(t, "bot.entry"))
    assert not found, found


def test_pbx_and_storage_import_nothing_above_them():
    found = _offences(lambda m, t: _under(m, "pbx", "storage") and _under(t, "bot", "handlers", "sandbox"))
    assert not found, found


def test_handlers_import_nothing_from_storage_or_pbx_but_the_allowed():
    def reaches_down(module: str, target: str) -> bool:
        return _under(module, "handlers") and _under(target, "storage", "pbx")

    found = _offences(reaches_down)
    assert not found, found


# ---------------------------------------------------------------------- the tools themselves


def test_find_cycle_finds_a_planted_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c", "x"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"outside"}}) is None


def test_imports_of_counts_function_imports_but_not_typing_only_ones():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import pbx.errors\n"
        "from . import sibling\n"
        "from .other import thing\n"
        "from bot.plans import validate\n"
        "if TYPE_CHECKING:\n"
        "    from bot.entry.scheduler import Scheduler\n"
        "else:\n"
        "    import storage.tables\n"
        "def later():\n"
        "    from ..routing.trace import Tracer\n"
    )
    known = {"bot.text.sibling", "bot.plans.validate"}
    assert imports_of(source, "bot.text.render", known=known) == {
        "typing",
        "pbx.errors",
        "bot.text.sibling",
        "bot.text.other",
        "bot.plans.validate",
        "storage.tables",
        "bot.routing.trace",
    }
    assert imports_of("from . import en", "bot.text.i18n", package=True, known={"bot.text.i18n.en"}) == {
        "bot.text.i18n.en"
    }


def test_the_graph_sees_a_function_level_circle(tmp_path, monkeypatch):
    """A circle hidden in a function (as doctor <-> trace once was) is still a circle."""
    for top in PRODUCT:
        (tmp_path / top).mkdir()
    (tmp_path / "bot" / "__init__.py").write_text("")
    (tmp_path / "bot" / "a.py").write_text("from .b import x\n")
    (tmp_path / "bot" / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert find_cycle(import_graph()) in (["bot.a", "bot.b", "bot.a"], ["bot.b", "bot.a", "bot.b"])
