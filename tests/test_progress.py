"""Long commands say what they are doing (issue 23): the one progress bar
(:func:`labeler._io.progress_bar`), ``labeler cluster``'s phase lines and ``labeler
simulate``'s progress lines, on real runs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tinyws
from sklearn.datasets import make_blobs
from test_imports import PACKAGE_DIR, import_graph, module_files

import labeler
from labeler._io import progress_bar
from labeler.cluster.run import ClusterConfig, fit_clusters, fit_phases
from labeler.loop.simulate import simulate

ROOT = Path(labeler.__file__).resolve().parents[1]
PHASE = re.compile(r"^cluster: (\w+) (\d+\.\d) s \((\d+)/(\d+)\)(?: - (.*))?$")
PROGRESS = re.compile(
    r"^simulate (\w+): (done, )?(\d+) actions, (\d+\.\d)% right \((\d+)/(\d+) faces\), [\d.]+ s$"
)


def _run_labeler(*args: str) -> subprocess.CompletedProcess:
    """The real command line in a fresh process (this checkout's package), default verbosity."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from labeler.cli import main; sys.argv[0] = 'labeler'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


# --- the one progress bar ------------------------------------------------------------------


def test_progress_bar_has_one_home_and_imports_tqdm_lazily():
    defined, tqdm_at_top = [], []
    for name, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("progress_bar", "_progress"):
                defined.append(f"{name}.{node.name}")
        for node in tree.body:  # module level only: a function-level import is lazy
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            tqdm_at_top += [name for m in mods if m.split(".")[0] == "tqdm"]
    assert defined == ["labeler._io.progress_bar"]
    assert tqdm_at_top == []
    graph = import_graph()
    # the layers that only wanted a bar no longer import the embedding loop for it
    for module in ("labeler.export.persons", "labeler.train.finetune"):
        assert "labeler._io" in graph[module], module
        assert "labeler.embeddings.embed" not in graph[module], module
    assert (PACKAGE_DIR / "_io.py").is_file()


def test_io_loads_no_tqdm_until_a_bar_is_made():
    code = (
        "import sys, labeler._io as io, labeler.embeddings.embed\n"
        "assert 'tqdm' not in sys.modules, 'imported at load'\n"
        "io.progress_bar(1, desc='x', enabled=False).close()\n"
        "assert 'tqdm' in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr


def test_progress_bar_writes_to_stderr_only_when_enabled(capsys):
    with progress_bar(5, desc="faces seen", enabled=True) as bar:
        bar.update(2)
        bar.update(3)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "faces seen" in captured.err and "5/5" in captured.err and "face/s" in captured.err
    with progress_bar(5, desc="quiet", enabled=False) as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""


# --- labeler cluster: one line per phase ------------------------------------------------------


def _phase_lines(caplog) -> list[tuple[str, float, int, int, str | None]]:
    out = []
    for rec in caplog.records:
        if rec.name == "labeler.cluster.run" and (m := PHASE.match(rec.getMessage())):
            out.append((m[1], float(m[2]), int(m[3]), int(m[4]), m[5]))
    return out


@pytest.mark.parametrize(
    "n, config, identical, expected",
    [
        # the default (Ward) on a sample, the rest placed by kNN: every fit phase
        (
            240,
            ClusterConfig(umap_max_points=180),
            False,
            ("pca", "knn_graph", "umap_cluster_space", "cluster", "umap_map", "place_rest"),
        ),
        (
            200,
            ClusterConfig(algorithm="kmeans"),
            False,
            ("pca", "knn_graph", "cluster", "umap_map"),
        ),
        (12, ClusterConfig(), False, ("pca", "knn_graph", "cluster")),  # too few: one group
        (60, ClusterConfig(), True, ("pca", "knn_graph", "cluster")),  # all vectors the same
    ],
    ids=["ward-sampled", "kmeans", "small", "identical"],
)
def test_fit_logs_each_phase_in_order_as_it_ends(caplog, n, config, identical, expected):
    X, _ = make_blobs(n, n_features=96, centers=3, random_state=0)
    if identical:
        X = np.repeat(X[:1], n, axis=0)
    ids = [f"f{i:04d}" for i in range(n)]
    with caplog.at_level("INFO", logger="labeler.cluster.run"):
        fit = fit_clusters(ids, X.astype(np.float32), config=config)
    lines = _phase_lines(caplog)
    names = tuple(name for name, *_ in lines)
    assert names == expected == tuple(fit.timings)
    # planned up front (before the PCA says whether all vectors are identical) = what ran
    assert fit_phases(n, 96, config, identical=identical) == expected
    k = len(expected)
    assert [(i, total) for _, _, i, total, _ in lines] == [(i, k) for i in range(1, k + 1)]
    for name, secs, *_ in lines:  # the seconds logged are the timings kept with the run
        assert secs == pytest.approx(fit.timings[name], abs=0.051)
    notes = {name: note for name, _, _, _, note in lines}
    n_groups = int(fit.result.labels.max()) + 1
    if n >= 20 and not identical:
        assert notes["cluster"] == f"{fit.result.params['algorithm']}, {n_groups} groups"
    else:
        assert notes["cluster"] == "one group" and n_groups == 1


def test_cluster_command_shows_every_phase_on_stderr(tmp_path):
    """A real ``labeler cluster`` on a small workspace, at the default verbosity: the phase
    lines come on stderr in order, numbered against the plan; stdout keeps its one line."""
    from labeler.embeddings.store import save_vectors
    from labeler.workspace import Workspace

    X, _ = make_blobs(150, n_features=96, centers=3, random_state=1)
    ids = [f"{i:05d}_0" for i in range(150)]
    ws = Workspace.open(tmp_path / "ws", create=True)
    ws.write_faces(tinyws.stub_faces(ids, detector="test"))
    save_vectors(ws, "test__face", ids, X.astype(np.float32), {"producer": "test"})
    out = _run_labeler("cluster", "-w", str(ws.root), "--features", "test__face")
    assert out.returncode == 0, out.stderr
    lines = [
        m
        for line in out.stderr.splitlines()
        if (m := PHASE.match(line.split(": ", 1)[-1] if line.startswith("INFO ") else line))
    ]
    expected = [
        "features",
        "pca",
        "knn_graph",
        "umap_cluster_space",
        "cluster",
        "umap_map",
        "save",
    ]
    assert [m[1] for m in lines] == expected, out.stderr
    assert [(int(m[3]), int(m[4])) for m in lines] == [(i, 7) for i in range(1, 8)]
    assert lines[0][5] == "150 faces x 96 dims (test__face)"
    assert lines[-1][5].startswith("run ")
    assert "cluster:" not in out.stdout
    assert re.fullmatch(r"run \S+: 150 faces -> \d+ clusters, .*\n", out.stdout), out.stdout


# --- labeler simulate: progress over the annotator's actions ------------------------------------


def _progress_lines(caplog, strategy: str) -> list[re.Match]:
    return [
        m
        for rec in caplog.records
        if rec.name == "labeler.loop.simulate"
        and (m := PROGRESS.match(rec.getMessage()))
        and m[1] == strategy
    ]


def _blobs(n_per: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + rng.normal(size=(n_per, 8)) for c in np.eye(3, 8) * 6.0])
    return X.astype(np.float32), np.repeat(["no_mask", "correct", "on_chin"], n_per)


@pytest.mark.parametrize("strategy", ["plain", "interactive"])
def test_simulate_reports_actions_and_accuracy_so_far(caplog, strategy):
    X, truth = _blobs()
    groups = np.random.default_rng(1).integers(0, 5, len(truth))
    kw = {"strategy": strategy, "features": X} if strategy == "interactive" else {}
    with caplog.at_level("INFO", logger="labeler.loop.simulate"):
        every = simulate(groups, truth, log_every=0, **kw)  # a line per action
    lines = _progress_lines(caplog, strategy)
    n = len(truth)
    assert len(lines) == every.actions_total + 1  # each action, then the closing line
    for k, m in enumerate(lines[:-1], start=1):
        assert not m[2] and int(m[3]) == k
        assert int(m[5]) == every.curve[k - 1] and int(m[6]) == n
        assert float(m[4]) == pytest.approx(100 * every.curve[k - 1] / n, abs=0.051)
    last = lines[-1]
    assert last[2] == "done, " and int(last[3]) == every.actions_total and last[4] == "100.0"
    starts = [r.getMessage() for r in caplog.records if r.getMessage().endswith("states")]
    assert starts == [f"simulate {strategy}: {n} faces, {len(np.unique(groups))} groups, 3 states"]
    # the lines only read the session: a quiet one gives the same result and says only that
    # it ended
    caplog.clear()
    with caplog.at_level("INFO", logger="labeler.loop.simulate"):
        quiet = simulate(groups, truth, log_every=3600, **kw)
    assert np.array_equal(quiet.curve, every.curve) and quiet.summary() == every.summary()
    assert [m[2] for m in _progress_lines(caplog, strategy)] == ["done, "]


def test_simulate_command_shows_progress_on_stderr_and_keeps_stdout(tmp_path):
    from test_simulate import _tiny_workspace

    ws, csv, run_id, groups, truth = _tiny_workspace(tmp_path)
    out = _run_labeler(
        "simulate", "-w", str(ws.root), "--truth", str(csv), "--features", "cues__face"
    )
    assert out.returncode == 0, out.stderr
    done = [
        m[1]
        for line in out.stderr.splitlines()
        if (m := PROGRESS.match(line.split(": ", 1)[-1] if line.startswith("INFO ") else line))
        and m[2]
    ]
    assert done == ["plain", "interactive"], out.stderr
    assert "% right" not in out.stdout and "actions," not in out.stdout
    assert out.stdout.splitlines()[1].split() == [
        "session", "NMI", "ARI", "purity", "eff95", "eff98", "eff99", "actions98", "clicks98"
    ]  # fmt: skip
