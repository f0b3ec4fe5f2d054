"""The Suggest step on a workspace: ``labeler suggest`` and the app's *Suggest* button.

:func:`suggest_workspace` loads the features as a head learns on them
(``labeler.features.load_features(..., head=True)``) and the
human labels of one field, runs :func:`labeler.loop.suggest.suggest` (out-of-fold calibrated
predictions; the faces of one label event are held out together; with ``model=`` a trained
run's probabilities vote too, :mod:`labeler.loop.vote`), and writes

- the suggestions (unlabeled faces only, never human labels) and the suspected label errors
  to ``labels.db`` (method ``suggest``; suspects in ``labeler.labels.SUSPECT_COLUMNS``), for
  the Map and the Review page;
- ``suggest/<field>.parquet`` (one row per suggested face: group, value, confidence, the
  measured precision of its band, its rank in the group) and ``suggest/<field>.json``
  (the groups in display order, the per-band out-of-fold precision, the label count the run
  saw and how long it took), which the Review page shows as suggestion groups.

:func:`start_background` runs it in a child process (never in the app's own interpreter,
whose GIL the page's reruns need) and keeps ``suggest/<field>.status.json``
(``running`` / ``done`` / ``error``) so a page can poll it without blocking;
``suggest/settings.json`` keeps whether the app's runs take the trained model's vote
(:func:`vote_setting`).

>>> run = suggest_workspace(ws, field="mask_state")  # doctest: +SKIP
>>> run.groups.head()                                 # value, size, precision, ...
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labeler.errors import InputError, LabelerError
from labeler.labels.suspects import SUSPECT_COLUMNS
from labeler.loop.suggest import SuggestConfig

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

METHOD = "suggest"
FACE_COLUMNS = ["face_id", "group", "rank", "value", "confidence", "precision", "measured"]
#: A status older than this with state "running" is taken as a crashed run.
STALE_S = 600.0


@dataclass(frozen=True, eq=False)
class SuggestRun:
    """A Suggest step on a workspace. ``groups``: one row per suggestion group in display
    order (group, value, band, lo, hi, size, precision, lower, n_checked, expected, pretick);
    ``faces``: FACE_COLUMNS (rank 0 = least confident in its group); ``suspects``:
    SUSPECT_COLUMNS; ``bands``: out-of-fold precision per band; ``n_labeled``: human labels
    the run learnt from; ``seconds``: wall time of the step (features loaded included)."""

    field: str
    classes: tuple[str, ...]
    n_faces: int
    n_labeled: int
    seconds: float
    temperature: float
    groups: pd.DataFrame = field(repr=False)
    faces: pd.DataFrame = field(repr=False)
    suspects: pd.DataFrame = field(repr=False)
    bands: pd.DataFrame = field(repr=False)
    last_event: int = 0  # the label store's last event when the run read the labels
    model: str | None = None  # the trained run that voted (labeler.loop.vote), if any
    vote_weight: float = 0.0  # the share its vote had


def suggest_dir(ws: Workspace) -> Path:
    return Path(ws.root) / "suggest"


def vote_setting(ws: Workspace, field: str) -> str | None:
    """The trained run the app's Suggest runs of ``field`` take a vote from (``"current"``),
    or None: one setting per workspace, shared by every annotator."""
    from labeler.workspace import read_json

    path = suggest_dir(ws) / "settings.json"
    return dict(read_json(path)).get("vote", {}).get(field) if path.exists() else None


def set_vote(ws: Workspace, field: str, model: str | None) -> None:
    """Set (or, with None, clear) :func:`vote_setting` for ``field``."""
    from labeler.workspace import read_json, write_json

    path = suggest_dir(ws) / "settings.json"
    settings = dict(read_json(path)) if path.exists() else {}
    votes = {k: v for k, v in settings.get("vote", {}).items() if k != field}
    if model:
        votes[field] = model
    write_json(path, settings | {"vote": votes})


def status_path(ws: Workspace, field: str) -> Path:
    return suggest_dir(ws) / f"{field}.status.json"


def label_codes(
    ws: Workspace, field: str, face_ids: np.ndarray, *, faces: pd.DataFrame | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The human labels of ``field`` as the Suggest step reads them: ``(classes, y (N,) int
    code per face of face_ids (-1 = unlabeled), event (N,) the label event of each face
    (-1 = unlabeled))``; classes in the schema's order, then values outside it. Faces
    labeled by one event (a bulk action) are held out together, so the unlabeled faces the
    model is judged on come from other groups. ``faces``: the faces table when the caller has
    read it already. Raises when the field has no labels yet."""
    from labeler.labels import LabelStore, human_labels

    labels = human_labels(ws, field, faces)
    if labels.empty:
        raise InputError(
            f"no human labels for field {field!r} in {ws.labels_db}; label a few groups in the app first"
        )
    store = LabelStore(ws.labels_db)
    schema = list(store.schema().values(field)) if field in store.schema().names else []
    present = set(labels["value"].astype(str))
    classes = [c for c in schema if c in present] + sorted(present - set(schema))
    code = {c: i for i, c in enumerate(classes)}
    by_face = labels.set_index("face_id")
    ids = pd.Series(np.asarray(face_ids).astype(str))
    y = ids.map(by_face["value"].astype(str)).map(code).fillna(-1).to_numpy(dtype=np.int64)
    event = ids.map(by_face["event_id"]).fillna(-1).to_numpy(dtype=np.int64)
    return classes, y, event


def suggest_workspace(
    ws: Workspace,
    *,
    field: str = "mask_state",
    feature_spec: str = "auto",
    config: SuggestConfig | None = None,
    min_confidence: float = 0.0,
    write: bool = True,
    model: str | None = None,
) -> SuggestRun:
    """Run the Suggest step for ``field`` on workspace ``ws`` (see the module docstring).

    min_confidence: leave out suggestions whose group's measured precision is lower.
    model: a trained run (``"current"``: the field's current one) whose probabilities vote
    beside the Suggest step's own (:mod:`labeler.loop.vote`; the first vote of a run scores
    every face once, then it is cached).
    Raises ``ValueError`` (one line, with the fix) when the field has no labels yet.
    """
    from labeler.features import features_for
    from labeler.labels import LabelStore
    from labeler.loop.suggest import suggest

    t0 = time.perf_counter()
    faces = ws.require_faces()
    face_ids = faces["face_id"].to_numpy().astype(str)
    last_event = LabelStore(ws.labels_db).version()[0]  # before the read: never overstated
    classes, y, event = label_codes(ws, field, face_ids, faces=faces)
    log.info("suggest: labels %.1f s (1/4)", time.perf_counter() - t0)
    t = time.perf_counter()
    X = features_for(ws, feature_spec, face_ids, head=True)
    log.info("suggest: features %.1f s (2/4)", time.perf_counter() - t)
    t = time.perf_counter()
    vote = run_id = None
    if model:
        from labeler.loop.vote import model_vote

        mv = model_vote(ws, face_ids, field=field, run=None if model == "current" else model)
        vote, run_id = mv.aligned(classes), mv.run_id
        log.info("suggest: the vote of %s %.1f s", run_id, time.perf_counter() - t)
        t = time.perf_counter()
    res = suggest(X, y, cv_groups=event, config=config, vote=vote)
    log.info("suggest: heads and groups %.1f s (3/4)", time.perf_counter() - t)
    names = np.asarray(classes, dtype=object)

    groups = res.groups.copy()
    groups["value"] = names[groups["value"].to_numpy(dtype=np.int64)] if len(groups) else []
    rows = np.flatnonzero(res.group >= 0)
    rank = np.zeros(len(y), np.int64)
    for g in range(len(groups)):
        members = res.group_members(g)
        rank[members] = np.arange(len(members))
    face_tab = pd.DataFrame(
        {
            "face_id": face_ids[rows],
            "group": res.group[rows],
            "rank": rank[rows],
            "value": names[np.searchsorted(res.classes, res.pred[rows])] if len(rows) else [],
            "confidence": res.confidence[rows].astype(float),
            "precision": res.precision[rows].astype(float),
            "measured": res.measured[rows],
        },
        columns=FACE_COLUMNS,
    )
    if min_confidence > 0:
        keep = groups.loc[groups["precision"] >= min_confidence, "group"]
        face_tab = face_tab[face_tab["group"].isin(keep)].reset_index(drop=True)
        groups = groups[groups["group"].isin(keep)].reset_index(drop=True)
    face_tab = face_tab.sort_values(["group", "rank"], kind="stable").reset_index(drop=True)
    sus = res.suspects
    suspects = pd.DataFrame(
        {
            "face_id": face_ids[sus],
            "field": field,
            "given": names[y[sus]] if len(sus) else [],
            "suggested": names[np.searchsorted(res.classes, res.pred[sus])] if len(sus) else [],
            "score": 1.0 - res.proba[sus, np.searchsorted(res.classes, y[sus])].astype(float)
            if len(sus)
            else [],
        },
        columns=SUSPECT_COLUMNS,
    )
    run = SuggestRun(
        field=field,
        classes=tuple(classes),
        n_faces=len(face_ids),
        n_labeled=int((y >= 0).sum()),
        last_event=last_event,
        seconds=time.perf_counter() - t0,
        temperature=res.temperature,
        groups=groups,
        faces=face_tab,
        suspects=suspects,
        bands=res.bands,
        model=run_id,
        vote_weight=res.vote_weight,
    )
    if write:
        t = time.perf_counter()
        save_run(ws, run)
        log.info("suggest: written %.1f s (4/4)", time.perf_counter() - t)
    log.info(
        "%s: %d suggestions in %d groups, %d suspects, from %d labels in %.2fs",
        field, len(face_tab), len(groups), len(suspects), run.n_labeled, run.seconds,
    )  # fmt: skip
    return run


def save_run(ws: Workspace, run: SuggestRun) -> None:
    """Write a run to labels.db (suggestions, suspects) and ``suggest/<field>.*``."""
    import io

    from labeler.labels import LabelStore
    from labeler.workspace import atomic_write_bytes, write_json

    store = LabelStore(ws.labels_db)
    sug = run.faces.assign(field=run.field)[["face_id", "field", "value", "confidence"]]
    store.write_suggestions(sug, METHOD, fields=[run.field])
    store.write_suspects(run.suspects, METHOD, fields=[run.field])
    out = suggest_dir(ws)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    run.faces.to_parquet(buf, index=False)
    atomic_write_bytes(out / f"{run.field}.parquet", buf.getvalue())
    write_json(
        out / f"{run.field}.json",
        {
            "field": run.field,
            "classes": list(run.classes),
            "n_faces": run.n_faces,
            "n_labeled": run.n_labeled,
            "last_event": run.last_event,
            "seconds": round(run.seconds, 3),
            "temperature": run.temperature,
            "created": time.time(),
            "groups": run.groups.to_dict(orient="records"),
            "bands": run.bands.to_dict(orient="records"),
            "n_suspects": len(run.suspects),
            "model": run.model,
            "vote_weight": run.vote_weight,
        },
    )


def load_meta(ws: Workspace, field: str) -> dict | None:
    """The last saved run's ``suggest/<field>.json`` (groups, bands, label count), or None."""
    from labeler.workspace import read_json

    path = suggest_dir(ws) / f"{field}.json"
    return dict(read_json(path)) if path.exists() else None


def load_run(ws: Workspace, field: str) -> tuple[dict, pd.DataFrame] | None:
    """The last saved run of ``field``: (meta with groups and bands, faces table), or None."""
    from labeler.workspace import read_json

    meta_path = suggest_dir(ws) / f"{field}.json"
    faces_path = suggest_dir(ws) / f"{field}.parquet"
    if not meta_path.exists() or not faces_path.exists():
        return None
    return read_json(meta_path), pd.read_parquet(faces_path)


# --- background runs -------------------------------------------------------------------------


def read_status(ws: Workspace, field: str) -> dict:
    """``{"state": "idle" | "running" | "done" | "error", ...}`` of the field's Suggest step;
    a "running" status older than :data:`STALE_S` reads as "error" (the run died)."""
    from labeler.workspace import read_json

    path = status_path(ws, field)
    if not path.exists():
        return {"state": "idle"}
    try:
        status = dict(read_json(path))
    except (OSError, ValueError):
        return {"state": "idle"}
    if status.get("state") == "running" and time.time() - status.get("started", 0) > STALE_S:
        status |= {"state": "error", "message": "the last Suggest run stopped without finishing"}
    return status


def _write_status(ws: Workspace, field: str, **status: Any) -> None:
    from labeler.workspace import write_json

    suggest_dir(ws).mkdir(parents=True, exist_ok=True)
    write_json(status_path(ws, field), status)


_START_LOCK = threading.Lock()


def start_background(
    ws: Workspace,
    field: str,
    *,
    feature_spec: str = "auto",
    config: SuggestConfig | None = None,
    model: str | None = None,
) -> threading.Thread | None:
    """Run :func:`suggest_workspace` in a child process unless a run for
    ``field`` is going already (the status file is the lock, so several app sessions share
    one run). Returns the thread that waits for it (``join()`` waits for the run), or None
    when a run was already in progress.

    A process, not a thread of the app: the run's Python parts would hold the app's GIL
    while annotators click (a run at 133,000 faces takes over a minute). Not niced: at nice
    5 or 10 the run took 1.3x / 1.7x as long for ticks within 0.06 s of nice 0
    (``bench/results/clicks_suggest_process.md``). The child writes the status; this thread
    logs its outcome in one line (the child's traceback, for a bug, is on the app's stderr)."""
    import json
    import os
    import subprocess
    import sys
    from dataclasses import asdict

    with _START_LOCK:
        if read_status(ws, field)["state"] == "running":
            return None
        started = time.time()
        _write_status(ws, field, state="running", started=started)
    spec = json.dumps({"root": str(ws.root), "field": field, "feature_spec": feature_spec,
                       "config": asdict(config) if config else None, "started": started,
                       "model": model})  # fmt: skip

    def work() -> None:
        code = subprocess.call(
            [sys.executable, "-c", "from labeler.loop.step import _child; _child()", spec],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        status = read_status(ws, field)
        if status["state"] == "running" and status.get("started") == started:  # it died
            _write_status(ws, field, state="error", started=started, finished=time.time(),
                          message=f"the Suggest process stopped (exit code {code})")  # fmt: skip
            status = read_status(ws, field)
        if status["state"] == "error":
            if status.get("kind") == "bug":
                log.error("Suggest step for %s failed: %s", field, status.get("message"))
            else:  # a step to run first: its one line is the news
                log.warning("Suggest step for %s: %s", field, status.get("message"))

    thread = threading.Thread(target=work, name=f"suggest-{field}", daemon=True)
    thread.start()
    return thread


def _child() -> None:
    """The background run's process (:func:`start_background`): run, write the status."""
    import json
    import os
    import sys

    from labeler.workspace import Workspace

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(sys.argv[1])
    ws, field, started = Workspace.open(spec["root"]), spec["field"], spec["started"]
    config = None
    if spec["config"]:
        config = SuggestConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in spec["config"].items()})  # fmt: skip
    try:
        run = suggest_workspace(ws, field=field, feature_spec=spec["feature_spec"], config=config,
                                model=spec.get("model"))  # fmt: skip
    except Exception as exc:  # shown on the page as one line; a bug's traceback on stderr
        bug = not isinstance(exc, LabelerError)
        if bug:
            log.exception("Suggest step for %s failed", field)
        _write_status(ws, field, state="error", started=started, finished=time.time(),
                      message=f"{type(exc).__name__}: {exc}".splitlines()[0],
                      kind="bug" if bug else "input", pid=os.getpid())  # fmt: skip
        return
    _write_status(ws, field, state="done", started=started, finished=time.time(),
                  n_labeled=run.n_labeled, n_groups=len(run.groups),
                  n_suggestions=len(run.faces), n_suspects=len(run.suspects),
                  seconds=round(run.seconds, 3), pid=os.getpid())  # fmt: skip
