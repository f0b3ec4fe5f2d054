"""pyproject.toml's dependency ranges stay honest against constraints.txt (the pins CI tests).

The rule: every dependency that ``make install`` installs (the core list and the extras named
in the Makefile) has a pin in constraints.txt, the pin satisfies the range, and the floor is
on the pin's major.minor (``numpy>=2.4`` for ``numpy==2.4.6``): a floor below that promises
versions nothing ever installed. Exact pins in pyproject (``torch==2.14.1``) must equal the
pin. No network, no installed metadata: only the two files are read.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, Version]:
    """constraints.txt as ``{canonical name: pinned version}`` (comments skipped)."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin (name==X.Y.Z)"
        out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def installed_extras() -> list[str]:
    """The extras ``make install`` installs: the ``-e '.[a,b]'`` of the Makefile."""
    m = re.search(r"-e '\.\[([\w,-]+)\]'", (ROOT / "Makefile").read_text())
    assert m, "Makefile: no `pip install ... -e '.[extras]'` line found; update this test"
    return m.group(1).split(",")


def make_install_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in installed_extras():
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def floor_problem(req: Requirement, pin: Version | None) -> str | None:
    """Why ``req`` is not honest against ``pin`` (None: it is)."""
    if pin is None:
        return f"{req.name} has no pin in constraints.txt; add '{req.name}==X.Y.Z' (the tested version)"
    if not req.specifier.contains(pin, prereleases=True):
        return (
            f"{req.name}: the pin {pin} is outside pyproject's range '{req.specifier}'; change one"
        )
    for spec in req.specifier:
        if spec.operator in ("==", "==="):
            if Version(spec.version) != pin:
                return f"{req.name}: pyproject says =={spec.version} but constraints.txt pins {pin}"
            return None
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=", ">")]
    if not floors:
        return f"{req.name}: no floor in '{req.specifier}'; write '>={pin.major}.{pin.minor}'"
    floor = max(floors)
    if floor.release[:2] != pin.release[:2]:
        return (
            f"{req.name}: floor {floor} is not on the pinned {pin.major}.{pin.minor} line "
            f"(pin {pin}); write '>={pin.major}.{pin.minor}'"
        )
    return None


def test_every_installed_dependency_is_pinned_and_its_floor_is_the_pins_minor():
    p = pins()
    problems = [
        msg
        for req in make_install_requirements()
        if (msg := floor_problem(req, p.get(canonicalize_name(req.name))))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("req", "pin", "ok"),
    [
        ("numpy>=2.4", "2.4.6", True),
        ("umap-learn>=0.5.6", "0.5.12", True),
        ("numpy>=1.26", "2.4.6", False),  # a floor nothing tested
        ("onnxruntime>=1.18", "1.32.0", False),
        ("starlette>=1.7,<1.8", "1.8.0", False),  # pin outside the range
        ("torch==2.14.1", "2.14.1", True),
        ("torch==2.14.0", "2.14.1", False),
        ("click", "8.5.1", False),  # no floor at all
        ("pandas>=3.1", None, False),  # no pin
    ],
)
def test_floor_rule(req, pin, ok):
    assert (floor_problem(Requirement(req), pin and Version(pin)) is None) is ok


def test_python_floor_is_the_tested_one():
    """CI and the README use Python 3.11; pyproject and ruff say so too."""
    data = pyproject()
    assert data["project"]["requires-python"] == ">=3.11"
    assert data["tool"]["ruff"]["target-version"] == "py311"


#: Installed for the tests only (the dev extra) or no longer a dependency: the package must
#: never import them, or a user's `pip install labeler` breaks.
NOT_FOR_THE_PACKAGE = {"skimage", "fast_hdbscan", "pytest", "hypothesis", "playwright"}


def test_the_package_imports_no_test_only_or_dropped_library():
    import ast

    found = []
    for path in sorted((ROOT / "labeler").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] in NOT_FOR_THE_PACKAGE
            ]
    assert not found, "\n".join(found)
