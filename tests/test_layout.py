"""The package's layout: no import cycle among avs_lib's modules (module-level and function-level
imports alike), nothing in the package root but ``cli.py`` and ``__init__.py``, a README
architecture table that lists the tree as it is, and documents whose relative links all lead somewhere."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import avs_lib
from avs_lib.experiments.readme import ARCHITECTURE_BLOCK, architecture_table, readme_architecture

PACKAGE = Path(avs_lib.__file__).parent
README = PACKAGE.parent / "README.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the avs_lib modules it imports}, from every import statement anywhere in its source
    (inside functions too). Importing ``avs_lib.a.b`` runs ``avs_lib/a/__init__.py`` first, so it
    is an edge to ``avs_lib.a`` as well."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from avs_lib.audio import frontends` imports a module
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        edges = set()
        for target in targets:
            if not target.startswith("avs_lib"):
                continue
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules)
        edges.discard(name)
        edges -= {m for m in edges if name.startswith(m + ".")}  # a module's own packages are already importing
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_avs_lib_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_sees_function_level_imports():
    graph = import_graph()
    assert "avs_lib.training.loop" in graph["avs_lib.cli"]  # cli imports lazily, inside its commands


def test_nothing_in_the_package_root_but_the_cli():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "cli.py"]


def test_readme_architecture_table_lists_the_tree():
    expected = architecture_table(PACKAGE)
    assert readme_architecture(README) == expected, (
        "README's architecture table differs from the package tree: run "
        "`python -m avs_lib.experiments.readme --architecture` to rewrite it")
    assert all(f"`{module_name(p)}`" in expected for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    assert ARCHITECTURE_BLOCK[0] in README.read_text()


LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of a Markdown link or image: [text](target)


def relative_links(document: Path) -> list[str]:
    """The targets of ``document``'s Markdown links that name a file of this repository (no scheme,
    no bare #anchor), without their #anchor."""
    targets = (m.group(1) for m in LINK.finditer(document.read_text()))
    return [t.split("#")[0] for t in targets if "://" not in t and not t.startswith(("#", "mailto:"))]


def test_the_link_reader_finds_relative_links_only(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("see [a](docs/a.md#part), ![fig](../figures/x.png), [web](https://x.org/y), [here](#top)")
    assert relative_links(doc) == ["docs/a.md", "../figures/x.png"]


def test_every_relative_link_of_the_readme_and_docs_leads_to_a_file():
    documents = [README, *sorted((README.parent / "docs").glob("*.md"))]
    broken = [f"{d.relative_to(README.parent)} -> {target}" for d in documents for target in relative_links(d)
              if not (d.parent / target).exists()]
    assert len(documents) > 1 and not broken, f"links to nothing: {broken}"
