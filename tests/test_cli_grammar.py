"""One grammar for the command line (issue 33): a walk over every command's ``--help``, one
option name per idea (old names as hidden aliases), ``-v/-q`` on every command, range
checks and distinct exit codes for a user error (1), a usage error (2) and a bug (70)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import labeler
from labeler.cli import cli
from labeler.cli._common import EXIT_BUG, Command, Group, rewrite_aliases

ROOT = Path(labeler.__file__).resolve().parents[1]

#: option names retired by issue 33: each may live on only as a hidden alias
RETIRED = {"--overwrite", "--redo", "--use", "--run", "-k", "--neighbors"}


def all_commands() -> list[tuple[str, click.Command]]:
    """(``"labels import"``, command) for every command and subcommand, groups included."""
    out: list[tuple[str, click.Command]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        if path:
            out.append((" ".join(path), cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(click.Context(cmd)):
                walk(cmd.get_command(click.Context(cmd), name), [*path, name])

    walk(cli, [])
    return out


COMMANDS = all_commands()


def visible_options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def test_the_walk_covers_every_command():
    names = {name for name, _ in COMMANDS}
    for expected in ("run", "export", "train", "predict", "labels import", "annotators add"):
        assert expected in names
    assert len(names) >= 24


@pytest.mark.parametrize("path", [name for name, _ in COMMANDS])
def test_every_command_help_lists_every_option_with_help_text(path):
    cmd = dict(COMMANDS)[path]
    res = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert res.exit_code == 0, res.output
    assert (cmd.help or "").strip(), f"'labeler {path}' has no description"
    for opt in visible_options(cmd):
        assert (opt.help or "").strip(), f"'labeler {path}' {opt.opts}: no help text"
        for name in opt.opts:
            assert name in res.output, f"'labeler {path} --help' does not show {name}"
    # every command (and group) takes -v and -q itself, not only before the command
    assert isinstance(cmd, (Command, Group)), f"'labeler {path}' is a plain click command"
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    assert {"-v", "-q"} <= opts, path


def test_one_option_name_per_idea_and_retired_names_are_hidden():
    """The same parameter (the value a command receives) has the same option names in every
    command; the retired names appear in no --help."""
    by_dest: dict[str, set[tuple[str, ...]]] = {}
    for path, cmd in COMMANDS:
        for opt in visible_options(cmd):
            names = tuple(sorted(opt.opts + opt.secondary_opts))
            by_dest.setdefault(opt.name, set()).add(names)
            assert not RETIRED & set(names), f"'labeler {path}' still shows {names}"
    mixed = {dest: names for dest, names in by_dest.items() if len(names) > 1}
    assert not mixed, f"one idea, several names: {mixed}"
    # the ideas the issue named, each by one name
    assert by_dest["force"] == {("--force",)}
    assert by_dest["workers"] == {("--workers",)}
    assert by_dest["cluster_run"] == {("--cluster-run",)}
    assert ("--n-neighbors",) in by_dest["n_neighbors"] | by_dest["k"]


#: (command, old args, new args): the old spelling parses to the same values as the new
ALIASES = [
    ("embed", ["--overwrite"], ["--force"]),
    ("detect", ["--redo"], ["--force"]),
    ("cluster", ["--use", "r1"], ["--cluster-run", "r1"]),
    ("place", ["--run", "r1", "-k", "7"], ["--cluster-run", "r1", "--n-neighbors", "7"]),
    ("place", ["--neighbors=9", "-k9"], ["--n-neighbors", "9", "--n-neighbors", "9"]),
    ("simulate", ["--run", "r2"], ["--cluster-run", "r2"]),
    ("train", ["--run", "m1"], ["--model", "m1"]),
    ("train", ["--run=m1"], ["--model=m1"]),
]


@pytest.mark.parametrize(("name", "old", "new"), ALIASES)
def test_old_option_names_still_parse_the_same(name, old, new, caplog):
    cmd = dict(COMMANDS)[name]
    with caplog.at_level(logging.WARNING, logger="labeler.cli"):
        old_ctx = cmd.make_context(name, list(old), resilient_parsing=True)
    new_ctx = cmd.make_context(name, list(new), resilient_parsing=True)
    assert old_ctx.params == new_ctx.params
    assert any("is now" in r.getMessage() for r in caplog.records)
    # no option carries an old name: it is a rewrite before parsing, absent from --help
    opts = {
        o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])
    }
    assert cmd.aliases and not set(cmd.aliases) & opts  # type: ignore[attr-defined]


def test_alias_rewrite_stops_at_double_dash_and_leaves_values_alone():
    aliases = {"--run": "--model", "-k": "--n-neighbors"}
    assert rewrite_aliases(["--run", "--run", "--", "--run"], aliases) == [
        "--model", "--model", "--", "--run",
    ]  # fmt: skip
    assert rewrite_aliases(["--running", "-k3", "--k"], aliases) == [
        "--running", "--n-neighbors=3", "--k",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "--workers", "0"],
        ["run", "--workers", "0"],
        ["embed", "--batch-size", "0"],
        ["train", "--folds", "0"],
        ["train", "--lr", "0"],
        ["train", "--epochs", "0"],
        ["suggest", "--min-confidence", "2"],
        ["app", "--port", "99999"],
        ["export", "--seed", "-1"],
        ["demo-data", "--per-state", "0"],
        ["cluster", "--n-neighbors", "1"],
    ],
)
def test_out_of_range_values_are_usage_errors_in_one_line(args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and args[1] in err[0], res.output
    assert "Traceback" not in res.output


def _labeler(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real command line in a fresh process (this checkout's package)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from labeler.cli import main; sys.argv[0] = 'labeler'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def _photos(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


def test_verbose_quiet_and_progress_on_a_real_command(tmp_path):
    photos = _photos(tmp_path / "photos")
    # -v after the command (was a usage error) shows the info lines; the bar is asked for
    loud = _labeler("ingest", str(photos), "-w", str(tmp_path / "ws1"), "-v", "--progress")
    assert loud.returncode == 0, loud.stderr
    assert "INFO" in loud.stderr and "ingest" in loud.stderr and "12/12" in loud.stderr
    assert "12 new" in loud.stdout
    before = _labeler("-v", "ingest", str(photos), "-w", str(tmp_path / "ws2"))
    assert before.returncode == 0 and "INFO" in before.stderr
    # -q: the result line only, no bar even when asked by default, no info lines
    quiet = _labeler("ingest", str(photos), "-w", str(tmp_path / "ws3"), "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and "12 new" in quiet.stdout
    # --no-progress wins over a terminal; default on a pipe: no bar
    plain = _labeler("ingest", str(photos), "-w", str(tmp_path / "ws4"))
    assert "12/12" not in plain.stderr


def test_exit_codes_user_usage_and_bug(tmp_path, monkeypatch):
    runner = CliRunner()
    # usage error: click's, 2
    assert runner.invoke(cli, ["run", "--no-such-option"]).exit_code == 2
    # user error: a step missing in a real workspace, one line, 1
    photos = _photos(tmp_path / "photos", 3)
    ws = tmp_path / "ws"
    assert runner.invoke(cli, ["ingest", str(photos), "-w", str(ws)]).exit_code == 0
    res = runner.invoke(cli, ["train", "-w", str(ws)])
    assert res.exit_code == 1, res.output
    assert res.output.count("Error:") == 1 and "Traceback" not in res.output
    # a bug: any other exception inside a command (fault injected into the real command)
    import labeler.info

    def broken() -> dict:
        return {"n": 1 / 0}

    monkeypatch.setattr(labeler.info, "collect_info", broken)
    res = runner.invoke(cli, ["info"])
    assert res.exit_code == EXIT_BUG == 70
    assert "internal error in labeler (ZeroDivisionError" in res.output
    assert "run the command again with -v" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["info", "-v"])
    assert (
        res.exit_code == 70 and "Traceback" in res.output and "the traceback is above" in res.output
    )

    # an OSError about the user's disk is a user error; one from labeler's own code a bug
    def full_disk() -> dict:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(labeler.info, "collect_info", full_disk)
    res = runner.invoke(cli, ["info"])
    assert res.exit_code == 1 and "free disk space" in res.output

    def internal() -> dict:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(labeler.info, "collect_info", internal)
    assert runner.invoke(cli, ["info"]).exit_code == 70


def test_quiet_in_a_fresh_process_prints_only_the_result():
    res = _labeler("info", "-q")
    assert res.returncode == 0 and "labeler" in res.stdout
    res = _labeler("-q", "info", "-q")
    assert res.returncode == 0 and res.stderr == "" and "python" in res.stdout
