"""The package's import graph has no cycles (issue 15): every import of pipeline/, judges/ and flows/,
the ones inside functions too, read from the source with `ast` (nothing imported, so it is fast)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "judges", "flows")


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package modules it imports}; `from a import b` counts a.b where b is a module, else a."""
    mods = _modules(root)

    def known(name: str | None) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    target = known(f"{base}.{a.name}")
                    deps.add(target if target and target != mod else known(base))
        graph[mod] = {d for d in deps if d and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert {"pipeline.stages.generate", "pipeline.sampling.candidate", "judges.absolute", "flows.cli"} <= set(graph)
    assert "pipeline.sampling.candidate" in graph["pipeline.sampling.pools"]  # function-level, relative imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "a.py").write_text("from pipeline import b\n")
    (tmp_path / "pipeline" / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "pipeline" / "c.py").write_text("import pipeline.a\n")
    (tmp_path / "judges" / "d.py").write_text("from pipeline.a import x\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["pipeline.a", "pipeline.b", "pipeline.c"]]
    assert graph["judges.d"] == {"pipeline.a"}


def test_no_package_module_passes_400_lines():
    """Short modules (issue 15): a module that outgrows 400 lines is split by concern, as pipeline/config/ was."""
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in _modules().values()}
    assert len(lengths) > 50
    assert {path: n for path, n in lengths.items() if n > 400} == {}


# The layers, top to bottom (docs/architecture.md): a module imports only from its own package or from packages in
# lower layers; packages that share a layer are independent of each other. LEAVES import nothing from the project,
# so any layer may use them.
LAYERS = (
    {"flows"},
    {"pipeline.loop"},
    {"pipeline.publish"},
    {"pipeline.review"},
    {"pipeline.stages", "pipeline.train"},
    {"pipeline.sampling", "pipeline.curation", "pipeline.verifiable"},
    {"judges"},
    {"pipeline.backends"},
    {"pipeline.core"},
    {"pipeline.config"},
)
LEAVES = {"pipeline", "pipeline.errors", "judges.templates"}


def _package(module: str) -> str | None:
    parts = module.split(".")
    for n in (2, 1):
        if any(".".join(parts[:n]) in layer for layer in LAYERS):
            return ".".join(parts[:n])
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    found = []
    for mod, deps in sorted(graph.items()):
        if mod in LEAVES:
            found += [f"{mod} -> {d} (a leaf imports nothing from the project)" for d in sorted(deps)]
            continue
        src = _package(mod)
        if src is None:
            found.append(f"{mod}: in no layer; add its package to LAYERS")
            continue
        for dep in sorted(deps - LEAVES):
            dst = _package(dep)
            if dst is None or dst == src:
                continue
            if rank[dst] < rank[src]:
                found.append(f"{mod} -> {dep} (up: {src} is below {dst})")
            elif rank[dst] == rank[src]:
                found.append(f"{mod} -> {dep} ({src} and {dst} share a layer and stay independent)")
    return found


def test_imports_go_down_the_layers():
    """flows above the products and the loop, above the stages, above judges, backends, core and config."""
    graph = import_graph()
    assert {_package(m) for m in graph if m not in LEAVES} == set().union(*LAYERS)  # every package is placed
    assert layer_violations(graph) == []


def test_the_layer_check_finds_an_upward_import_a_sibling_import_and_an_unplaced_module(tmp_path):
    graph = {
        "pipeline.core.store": {"pipeline.stages.generate"},  # core must not know a stage
        "pipeline.curation.aggregate": {"pipeline.sampling.pools", "pipeline.errors"},  # siblings; a leaf is fine
        "judges.templates": {"pipeline.core.store"},  # a leaf that imports
        "pipeline.newthing": set(),
        "pipeline.stages.generate": {"pipeline.core.store", "judges.absolute"},  # down: fine
    }
    found = layer_violations(graph)
    assert len(found) == 4, found
    assert any("up: pipeline.core is below pipeline.stages" in f for f in found)
    assert any("share a layer" in f for f in found)
    assert any("a leaf imports nothing" in f for f in found)
    assert any("pipeline.newthing: in no layer" in f for f in found)


def test_only_the_backend_factory_builds_backends():
    """No stage, flow or judge calls `make_backend`: pipeline/backends/factory.py gives every backend the stage's
    ledger, batch-file folder and request log (a stage that built its own once skipped the ledger and the budget)."""
    users = []
    for mod, path in _modules().items():
        if mod.startswith("pipeline.backends"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        if "make_backend" in names:
            users.append(mod)
    assert users == []


def test_every_package_maps_its_modules_and_no_module_cites_a_file_outside_the_repository():
    for init in sorted({p.parent / "__init__.py" for p in _modules().values()}):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        modules = sorted(p.name for p in init.parent.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
        unmapped = [m for m in modules if m not in doc]
        assert unmapped == [], f"{init.relative_to(ROOT)}: its docstring does not map {unmapped}"
    for mod, path in _modules().items():
        text = path.read_text()
        assert "DESIGN.md" not in text and "shared/ENVIRONMENT" not in text, f"{mod} cites a file users do not have"


def test_every_stage_that_builds_a_backend_is_metered_in_flow_order():
    """A stage whose backends come from the factory gets a ledger; the accounting must know the stage (its place in
    METERED orders what earlier stages spent). Self-critique once built its backend outside the factory and was
    missing here."""
    from pipeline.core.accounting import METERED
    from pipeline.stages.order import STAGES

    builders = set()
    for mod, path in _modules().items():
        if mod.startswith("pipeline.stages.") and "factory." in path.read_text():
            builders.add(mod.rsplit(".", 1)[1])
    names = [s.name for s in STAGES]
    assert builders <= set(names) and builders <= set(METERED), builders - set(METERED)
    assert list(METERED) == [n for n in names if n in METERED]
