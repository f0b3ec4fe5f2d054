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
    for note in (ROOT / "bench").glob("*.md"):
        shutil.copy(note, copy / "bench")
    shutil.copytree(ROOT / "docs", copy / "docs")
    for code in ("labeler/cluster/run.py", "labeler/faces/regions.py", "labeler/detect/fused.py"):
        (copy / code).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / code, copy / code)
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


def test_every_number_in_prose_is_traced():
    """The numbers README.md states outside the generated blocks: each is in the bench output
    or note its passage cites (or, for a setting, in the code that sets it); in the
    measurement sections no passage with a number goes without a cited bench output."""
    figures = _figures()
    readme = (ROOT / "README.md").read_text()
    assert figures.untraced(readme) == []


def test_the_tracer_fails_on_a_drifted_or_uncited_number():
    figures = _figures()
    readme = (ROOT / "README.md").read_text()
    base = set(figures.untraced(readme))

    def untraced(text: str) -> list[str]:  # what an edit adds
        return [u for u in figures.untraced(text) if u not in base]

    # a number copied from docs/APP.md, then edited by hand
    assert "(0.108 per face," in readme
    drifted = untraced(readme.replace("(0.108 per face,", "(0.118 per face,"))
    assert len(drifted) == 1 and "0.118 is in none of docs/APP.md" in drifted[0], drifted
    # a measurement paragraph whose source citation was dropped
    cited = "--sessions tool` (`bench/TRAIN.md`): a classifier"
    assert cited in readme
    uncited = untraced(readme.replace(cited, "--sessions tool`: a classifier"))
    assert uncited and all("no bench output cited" in u for u in uncited), uncited
    # a citation of a file that does not exist
    gone = untraced(readme.replace("`bench/TRAIN.md`)", "`bench/TRAINING.md`)"))
    assert any("bench/TRAINING.md, which is missing" in g for g in gone), gone
    # a setting traced to the code that sets it (UMAP's sample, cluster/run.py)
    assert "20,000 faces (Ward" in readme
    setting = untraced(readme.replace("20,000 faces (Ward", "30,000 faces (Ward"))
    assert len(setting) == 1 and "30,000 is in none of" in setting[0], setting


def test_number_matching_follows_rounding():
    figures = _figures()
    near = figures._near
    assert near("16,200", [16214.6]) and near("0.79", [0.791506]) and near("99.5", [0.995])
    assert near("7e-06", [7.03e-06]) and near("143", [142.6])
    assert not near("0.80", [0.791506]) and not near("144", [142.6])
    assert not near("16,300", [16214.6])
