"""Shared fixtures: the face data in ../shared (skipped cleanly where absent)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
