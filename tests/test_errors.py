"""One error path: a LabelerError is one line and exit code 1, caught once in the command
group; any other exception is a bug and shows its traceback; -vv adds the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from labeler.cli import cli
from labeler.errors import (
    ExistsError,
    InputError,
    LabelerError,
    NotFoundError,
    UnknownKeyError,
    WorkspaceError,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ws(tmp_path):
    from labeler.workspace import Workspace

    return Workspace.open(tmp_path / "ws", create=True)


def run_labeler(*args: str, patch: str = "") -> subprocess.CompletedProcess:
    """``labeler ARGS`` in a fresh interpreter (the console entry point), after ``patch``."""
    code = f"import sys\n{patch}\nfrom labeler.cli import main\nsys.argv = ['labeler', *{list(args)!r}]\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_user_errors_are_labeler_errors_and_still_what_they_were():
    from labeler._deps import MissingDependency
    from labeler.embeddings.types import BackboneError
    from labeler.imageio import ImageDecodeError
    from labeler.labels import LabelStoreError
    from labeler.workspace import WorkspaceError as FromWorkspace

    assert FromWorkspace is WorkspaceError
    for cls, builtin in (
        (WorkspaceError, ValueError),
        (InputError, ValueError),
        (BackboneError, ValueError),
        (LabelStoreError, ValueError),
        (ImageDecodeError, ValueError),
        (MissingDependency, ImportError),
        (NotFoundError, FileNotFoundError),
        (ExistsError, FileExistsError),
        (UnknownKeyError, KeyError),
    ):
        assert issubclass(cls, LabelerError) and issubclass(cls, builtin), cls
    assert (
        str(UnknownKeyError("field 'x' is not in the schema")) == "field 'x' is not in the schema"
    )


@pytest.mark.parametrize(
    "args, expect",
    [
        (["cluster", "--features", "cues__face*x"], "bad weight"),  # bad feature spec
        (["cluster"], "labeler embed"),  # a missing step
        (["export", "--out", "E", "--ratios", "8:x"], "8:1:1"),  # bad ratios
        (["train"], "labeler detect"),
    ],
)
def test_a_user_error_is_one_line_and_exit_code_1(ws, tmp_path, args, expect):
    args = [*args[:1], "-w", str(ws.root), *args[1:]]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], res.output
    assert isinstance(res.exception, SystemExit)  # handled, not a crash


def test_a_bug_is_not_a_user_error(ws, monkeypatch):
    """A plain ValueError from inside labeler is a bug: exit code 70 (a user error is 1), one
    line that names it a bug (not "Error: <message>" as if the input were wrong)."""
    import labeler.cluster.store as store

    def broken(ws):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(store, "list_runs", broken)
    res = CliRunner().invoke(cli, ["cluster", "-w", str(ws.root), "--list"])
    assert res.exit_code == 70 and isinstance(res.exception, SystemExit)
    assert not res.output.startswith("Error: internal invariant")
    assert "internal error in labeler (ValueError: internal invariant broken)" in res.output


def test_the_console_entry_point_shows_a_bug_with_its_traceback_under_v(ws):
    patch = (
        "import labeler.cluster.store as s\n"
        "def broken(ws): raise RuntimeError('internal invariant broken')\n"
        "s.list_runs = broken"
    )
    proc = run_labeler("cluster", "-w", str(ws.root), "--list", patch=patch)
    assert proc.returncode == 70
    assert "Traceback" not in proc.stderr and "this is a bug" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_labeler("cluster", "-w", str(ws.root), "--list", "-v", patch=patch)
    assert proc.returncode == 70
    assert "Traceback" in proc.stderr and "RuntimeError: internal invariant broken" in proc.stderr


def test_the_console_entry_point_user_error_one_line_and_vv_traceback(ws):
    args = ("cluster", "-w", str(ws.root), "--features", "cues__face*x")
    proc = run_labeler(*args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad weight 'x'" in lines[0], proc.stderr
    proc = run_labeler("-vv", *args)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "InputError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_commands_do_not_catch_errors_themselves():
    """The group is the one place that turns exceptions into one line."""
    for path in sorted((ROOT / "labeler" / "cli").glob("*.py")):
        text = path.read_text()
        assert "ClickException(str(exc))" not in text, path.name
        assert "except ValueError" not in text and "user_errors" not in text, path.name
