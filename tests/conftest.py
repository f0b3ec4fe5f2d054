"""Shared fixtures: the face data in ../shared (skipped cleanly where absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it in ``sys.modules``;
    multiprocessing's spawn/forkserver children then re-run that page instead of pytest's
    entry point (labeler's process pools and the two-writer label test died of it). Each test
    gets the real ``__main__`` back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


def shared_dataset(name: str) -> Path:
    """Path of ``../shared/data/<name>``; skips the test when it is not there."""
    path = SHARED / name
    if not (path / "images").is_dir() or not (path / "labels.csv").is_file():
        pytest.skip(f"{path} not present (shared data only exists beside the dev checkout)")
    return path


def shared_labels(name: str) -> pd.DataFrame:
    return pd.read_csv(shared_dataset(name) / "labels.csv")


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
