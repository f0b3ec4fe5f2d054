"""README figures are what bench/readme_figures.py writes from the bench outputs (issue 23):
a hand-edited number, or a bench output rewritten without the README, fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "readme_figures.py"


def _figures():
    spec = importlib.util.spec_from_file_location("readme_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_what_the_script_writes():
    figures = _figures()
    readme = (ROOT / "README.md").read_text()
    assert figures.render(readme) == readme, "run: python bench/readme_figures.py"
    for name in figures.BLOCKS:  # every block present, none empty
        m = re.search(rf"<!-- figures:{name} -->(.*?)<!-- /figures:{name} -->", readme, re.S)
        assert m and re.search(r"\d", m.group(1)), name


def test_check_mode_names_the_stale_block(tmp_path):
    """``--check`` on the repository passes; on a README with one hand-edited figure it exits 1
    naming that block."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "repo"
    (copy / "bench").mkdir(parents=True)
    shutil.copy(SCRIPT, copy / "bench")
    shutil.copytree(ROOT / "bench" / "results", copy / "bench" / "results")
    shutil.copy(ROOT / "bench" / "LOOP.md", copy / "bench")
    readme = (ROOT / "README.md").read_text()
    edited = re.sub(r"(<!-- figures:loop_sessions -->)\d+", r"\g<1>0", readme)
    assert edited != readme
    (copy / "README.md").write_text(edited)
    proc = subprocess.run(
        [sys.executable, str(copy / "bench" / "readme_figures.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "loop_sessions" in proc.stderr, proc.stderr


def test_a_new_bench_output_changes_the_readme(tmp_path):
    """The figures are read from the files: change a result, the README text changes."""
    figures = _figures()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results)
    shutil.copy(ROOT / "bench" / "LOOP.md", tmp_path / "LOOP.md")
    data = json.loads((results / "grouping.json").read_text())
    (row,) = [
        r
        for r in data["rows"]
        if r["set"] == "realmasks" and r["candidate"] == figures.DEFAULT and r["seed"] == 0
    ]
    row["plain95"] = 12.34
    (results / "grouping.json").write_text(json.dumps(data))
    readme = (ROOT / "README.md").read_text()
    new = figures.render(readme, results)
    assert "| **12.3** / 7.4 (2.1 / 2.1) |" in new and "| **9.3** / 7.4" not in new
    with pytest.raises(ValueError, match="figures:effort"):
        figures.render(readme.replace("<!-- figures:effort -->", ""), results)
