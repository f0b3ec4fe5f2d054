"""The CI skip check in conftest.py (issue 23): run as CI (``LABELER_CI=1``), a skip whose
reason is not on ``ALLOWED_SKIPS`` fails the session, and so does a missing ``../shared``;
hard dependencies are imported by the tests, never ``importorskip``-ped.

Each case runs pytest in a fresh interpreter on a tiny test file next to a copy of the real
conftest.py."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from conftest import ALLOWED_SKIPS, skip_reason_allowed

TESTS = Path(__file__).resolve().parent


def run_pytest(tmp_path: Path, body: str, *, ci: bool, shared: Path | None = None):
    """Pytest on ``test_case.py`` (``body``) with the project's conftest.py beside it."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in ("LABELER_CI", "LABELER_SHARED")}
    if ci:
        env["LABELER_CI"] = "1"
    if shared is not None:
        env["LABELER_SHARED"] = str(shared)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


NOT_ALLOWED = """
import pytest

def test_browser():
    pytest.skip("chromium not installed (apt-get install chromium)")

def test_passes():
    assert True
"""

ALLOWED = """
import os
import pytest

def test_gpu():
    pytest.skip("no CUDA device")

def test_backbones():
    pytest.skip("optional extra not installed: labeler[backbones] (efficientnet_lite1)")

def test_chmod():
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing")

def test_passes():
    assert True
"""


def test_a_skip_not_on_the_allow_list_fails_ci(tmp_path):
    proc = run_pytest(tmp_path, NOT_ALLOWED, ci=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CI: skip not allowed")]
    assert lines == [
        "CI: skip not allowed: test_case.py::test_browser: "
        "chromium not installed (apt-get install chromium)"
    ]
    assert "1 skip(s) not on ALLOWED_SKIPS" in proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout


def test_the_same_skip_outside_ci_passes(tmp_path):
    proc = run_pytest(tmp_path, NOT_ALLOWED, ci=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CI:" not in proc.stdout


def test_allowed_skips_pass_ci(tmp_path):
    proc = run_pytest(tmp_path, ALLOWED, ci=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CI:" not in proc.stdout and "skipped" in proc.stdout


def test_a_module_level_importorskip_fails_ci(tmp_path):
    body = 'import pytest\n\npytest.importorskip("no_such_module_xyz")\n\ndef test_a():\n    pass\n'
    proc = run_pytest(tmp_path, body, ci=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"CI: skip not allowed: test_case.py: could not import 'no_such_module_xyz'",
                     proc.stdout), proc.stdout  # fmt: skip


def test_a_failing_session_keeps_its_failure(tmp_path):
    body = NOT_ALLOWED + "\ndef test_fails():\n    assert False\n"
    proc = run_pytest(tmp_path, body, ci=True)
    assert proc.returncode == 1 and "1 failed" in proc.stdout


SHARED_BODY = """
from conftest import shared_dataset

def test_needs_mfr2():
    assert (shared_dataset("mfr2") / "labels.csv").is_file()
"""


def test_missing_shared_fails_ci_and_skips_outside(tmp_path):
    empty = tmp_path / "empty_shared"
    empty.mkdir()
    (tmp_path / "ci").mkdir()
    proc = run_pytest(tmp_path / "ci", SHARED_BODY, ci=True, shared=empty)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout
    assert f"{empty / 'data' / 'mfr2'} not present: CI (LABELER_CI=1)" in proc.stdout
    (tmp_path / "dev").mkdir()
    proc = run_pytest(tmp_path / "dev", SHARED_BODY, ci=False, shared=empty)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout


def test_the_allow_list_is_short_and_says_why():
    assert len(ALLOWED_SKIPS) <= 4
    assert all(len(why) > 20 for why in ALLOWED_SKIPS.values())
    assert skip_reason_allowed("no CUDA device / faiss-gpu")
    assert not skip_reason_allowed("chromium not installed (apt-get install chromium)")
    assert not skip_reason_allowed("could not import 'hdbscan': No module named 'hdbscan'")


def _hard_dependency_modules() -> set[str]:
    """Top-level import names of the installed distributions in pyproject's ``dependencies``
    (from their file lists: dlib-bin's top_level.txt does not name ``dlib``)."""
    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    modules = set()
    for dep in project["dependencies"]:
        for path in metadata.files(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) or []:
            top = path.parts[0]
            if not top.endswith((".dist-info", ".data")) and top not in ("..", "__pycache__"):
                modules.add(top.split(".")[0])
    return modules


def test_hard_dependencies_are_never_importorskipped():
    hard = _hard_dependency_modules()
    assert {"torch", "cv2", "mediapipe", "faiss", "hdbscan", "dlib"} <= hard
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                module = str(node.args[0].value).split(".")[0]
                if module in hard:
                    found.append(f"{path.name}:{node.lineno}: importorskip({module!r})")
    assert not found, "hard dependencies are imported, not skipped: " + "; ".join(found)
