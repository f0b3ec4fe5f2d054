"""The Suggest step in the app: a button (and an automatic run after every
:data:`AUTO_EVERY` new labels) that retrains in a background process
(:func:`labeler.step.start_background`) while the page stays usable, a status line that
polls the run (``st.fragment(run_every=...)``), and the suggestion groups and suspects of
the Review page. Everything it writes goes through :class:`labeler.labels.LabelStore`, one
event per accept."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from labeler.errors import LabelerError
from labeler.labels import NOT_A_FACE, AssignPlan, LabelStore, plan_assign
from labeler.loop import step
from labeler.ui import components, data, state
from labeler.ui.state import REVIEW_PREFIX, K
from labeler.workspace import Workspace

#: New human labels of a field after which the page starts a Suggest run by itself.
AUTO_EVERY = 25
#: Faces of a group shown at once (the least sure first).
PAGE_SIZE = 48
POLL_S = 1.0


@dataclass(frozen=True)
class Keys:
    """Widget and session keys of the Suggest panel (AppTest drives them by name)."""

    suggest_btn: str = "suggest_btn"
    group_pick: str = "suggest_group"
    suspect_value: str = "suspect_value"
    banner: str = "_review_banner"  # (kind, message) of the last change, shown until the next
    auto_started: str = "_suggest_auto_started"  # {field: labels count it started at}
    seen_finish: str = "_suggest_seen_finish"  # {field: finished stamp shown}
    vote: str = "suggest_vote"  # the toggle: the trained model votes in Suggest runs


SK = Keys()


def _say(message: str, kind: str = "success", db: str | None = None) -> None:
    """Keep ``message`` as the banner, stamped with the last label event after the change
    it reports (``db``): once another event changes the labels, it is stale. Only events
    count: a background Suggest run writing suggestions or suspects leaves it true."""
    version = LabelStore(db).version()[0] if db else None
    st.session_state[SK.banner] = (kind, message, version)


def banner(ws: Workspace) -> None:
    """What the last click on this page changed; shown until the labels change again (a
    label given on another page, an undo): then it would no longer be true."""
    item = st.session_state.get(SK.banner)
    if not item:
        return
    kind, message, version = item
    if version is not None and version != data.label_version(ws)[0]:
        st.session_state.pop(SK.banner, None)
        return
    getattr(st, kind, st.info)(message)


def undo_redo(ws: Workspace) -> None:
    """Undo / Redo of this annotator's last label events, on the page, with a banner."""
    components.undo_redo(ws, _undo_redo)


def _undo_redo(db: str, what: str) -> None:
    try:
        store = LabelStore(db)
        eid = getattr(store, what)(state.require_annotator())
    except LabelerError as exc:  # a damaged or locked store: one line, no traceback
        _say(str(exc), "error")
        return
    if eid is None:
        _say(f"Nothing to {what}.", "info")
        return
    ev = store.history(limit=None).set_index("event_id").loc[eid]
    gone = "no longer" if what == "undo" else "again"
    n = int(ev["n_faces"])
    _say(f"{'Undid' if what == 'undo' else 'Redid'} event {eid}: {data.plural(n, 'face')} "
         f"{'is' if n == 1 else 'are'} {gone} {ev['field']}={ev['value']}.", "info",
         db)  # fmt: skip
    state.clear_widget_keys(REVIEW_PREFIX)


def _labels_count(ws: Workspace, field: str) -> int:
    return len(data.labels(ws, field))


def _start(ws_root: str, field: str) -> None:
    ws = Workspace.open(ws_root)
    if step.start_background(ws, field, model=step.vote_setting(ws, field)) is None:
        _say("A Suggest run for this field is already in progress.", "info")


def auto_suggest(ws: Workspace, field: str | None = None) -> bool:
    """Start a background Suggest run for ``field`` (default: the field the annotator works
    on) when :data:`AUTO_EVERY` labels were given since the last run. Cheap enough for every
    page (a cached label count and one small status file). Returns whether a run is going."""
    if field is None:
        names = data.schema(ws).names
        field = state.field(names[0]) if names else None
        if field is None:
            return False
    status = step.read_status(ws, field)
    if status["state"] == "running":
        return True
    n_labels = _labels_count(ws, field)
    seen_at = int(status.get("n_labeled", 0)) if status["state"] == "done" else 0
    auto = st.session_state.setdefault(SK.auto_started, {})
    if (
        n_labels >= 2
        and n_labels - seen_at >= AUTO_EVERY
        and auto.get(field) != n_labels
        and status["state"] != "error"
    ):
        auto[field] = n_labels
        step.start_background(ws, field, model=step.vote_setting(ws, field))
        return True
    return False


def suggest_bar(ws: Workspace, field: str) -> None:
    """The Suggest button, the automatic start, and a status line that polls the run."""
    running = auto_suggest(ws, field)
    n_labels = _labels_count(ws, field)
    c1, c2, c3 = st.columns([1, 1.6, 3.4], vertical_alignment="center")
    c1.button(
        "Suggest", key=SK.suggest_btn, icon=":material/auto_awesome:", disabled=running,
        help="Retrain on the labels so far (in the background) and suggest labels for the "
        f"unlabeled faces; also runs by itself after every {AUTO_EVERY} new labels.",
        on_click=_start, args=(str(ws.root), field),
    )  # fmt: skip
    with c2:
        _vote_toggle(ws, field)
    with c3:
        _status_line(ws, field, n_labels, running)


def _vote_toggle(ws: Workspace, field: str) -> None:
    """The trained model's vote in Suggest runs, on or off for every annotator of the
    workspace; shown only when the field's current run can vote."""
    from labeler.loop.vote import votable_run

    run = votable_run(ws, field)
    if run is None:
        return
    st.session_state[SK.vote] = step.vote_setting(ws, field) is not None  # as the file says
    f1 = run.get("report", {}).get("macro_f1")
    st.toggle(
        f"Trained model votes ({run['run_id']}"
        + (f", macro-F1 {f1:.2f})" if f1 is not None else ")"),
        key=SK.vote,
        help="The Suggest runs also ask the model 'labeler train' saved last for this field "
        "(out-of-fold for the faces it was trained on), with the share that fits the labels "
        "best; its first run scores every face once. For every annotator of this workspace.",
        on_change=_set_vote, args=(str(ws.root), field),
    )  # fmt: skip


def _set_vote(ws_root: str, field: str) -> None:
    on = bool(st.session_state.get(SK.vote))
    step.set_vote(Workspace.open(ws_root), field, "current" if on else None)
    _say("The trained model votes in the next Suggest run." if on
         else "The next Suggest run is the Suggest step's alone.", "info")  # fmt: skip


def _status_line(ws: Workspace, field: str, n_labels: int, running: bool) -> None:
    @st.fragment(run_every=POLL_S if running else None)
    def line() -> None:
        status = step.read_status(ws, field)
        seen = st.session_state.setdefault(SK.seen_finish, {})
        if status["state"] == "running":
            took = time.time() - status.get("started", time.time())
            st.caption(f":material/hourglass_top: Suggesting for **{field}** in the "
                       f"background ({took:.0f} s) - keep labeling.")  # fmt: skip
            return
        finished = status.get("finished")
        if running and finished and seen.get(field) != finished:
            seen[field] = finished
            st.rerun()  # the run ended: redraw the page with its groups
        if status["state"] == "error":
            st.caption(f":material/error: Last Suggest run failed: {status.get('message', '')}")
            return
        meta = step.load_meta(ws, field)
        if meta is None:
            st.caption(_nothing_yet(ws, field, n_labels))
            return
        if "last_event" in meta:  # labels given after the run read them, as the store says
            new = data.store(ws).labeled_since(field, int(meta["last_event"]))
        else:  # a run saved by an older labeler
            new = n_labels - meta["n_labeled"]
        ago = time.time() - meta.get("created", time.time())
        st.caption(
            f"Suggestions from {data.plural(meta['n_labeled'], 'label')}, "
            f"{data.plural(len(meta['groups']), 'group')}, "
            f"made in {meta['seconds']:.1f} s, {_ago(ago)} ago"
            + (
                f", the vote of {meta['model']} at {meta.get('vote_weight', 0):.0%}"
                if meta.get("model")
                else ""
            )  # fmt: skip
            + (f"; {data.plural(new, 'new label')} since" if new > 0 else "")
        )

    line()


def _nothing_yet(ws: Workspace, field: str, n_labels: int) -> str:
    """Why there are no suggestions, and what to do, from the labels as they are."""
    n_faces = len(data.faces(ws))
    if n_faces and n_labels >= n_faces:
        return f"Every face is labeled for {field}: nothing left to suggest."
    values = set(data.labels(ws, field).values()) - {NOT_A_FACE}
    if len(values) < 2:
        return (f"No suggestions yet: label faces of two values of {field} (now: "
                f"{len(values)}), then press Suggest.")  # fmt: skip
    return "No suggestions yet: press Suggest."


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- suggestion groups -----------------------------------------------------------------------


def open_groups(ws: Workspace, store: LabelStore, field: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The saved run's groups and faces, less the faces labeled or rejected since (cached
    per saved run and label-store version: a rerun at 133k faces costs no query)."""
    meta_path = step.suggest_dir(ws) / f"{field}.json"
    if not meta_path.exists():
        return pd.DataFrame(), pd.DataFrame()
    stamp = meta_path.stat().st_mtime_ns
    return _open_groups(str(ws.root), field, stamp, data.label_version(ws))


@st.cache_data(max_entries=4, show_spinner=False)
def _open_groups(
    root: str, field: str, stamp: int, version: tuple[int, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    ws = Workspace.open(root)
    saved = step.load_run(ws, field)
    if saved is None:
        return pd.DataFrame(), pd.DataFrame()
    meta, faces = saved
    labeled = set(data.labels(ws, field))
    pending = LabelStore(ws.labels_db).suggestions(field, pending=True)
    pending = set(pending.loc[pending["method"] == step.METHOD, "face_id"])
    faces = faces[faces["face_id"].isin(pending) & ~faces["face_id"].isin(labeled)]
    if "measured" not in faces.columns:  # a run saved before faces were told apart
        faces = faces.assign(measured=True)
    groups = pd.DataFrame(meta["groups"])
    if groups.empty:
        return groups, faces
    by_group = faces.groupby("group")["confidence"]
    left = by_group.size()
    groups = groups[groups["group"].isin(left.index)].copy()
    groups["left"] = groups["group"].map(left).astype(int)
    unmeasured = (~faces["measured"].astype(bool)).groupby(faces["group"]).sum()
    groups["unmeasured"] = groups["group"].map(unmeasured).fillna(0).astype(int)
    # the confidence of the faces still open (not the bin the group was cut from)
    groups["conf_lo"] = groups["group"].map(by_group.min()).astype(float)
    groups["conf_hi"] = groups["group"].map(by_group.max()).astype(float)
    return groups.reset_index(drop=True), faces


def group_title(g: pd.Series) -> str:
    """A group's line: its value, the faces left, the confidence of those faces (one number
    when they all have the same), how often such faces were right in cross-validation, or
    that the group's faces are unlike every labeled face (nothing measured vouches for them)."""
    lo, hi = float(g["conf_lo"]), float(g["conf_hi"])
    conf = f"{lo:.2f}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}"
    left, unmeasured = int(g["left"]), int(g["unmeasured"])
    if unmeasured >= left:
        how = "unmeasured: unlike every labeled face"
    elif unmeasured:
        how = (f"{g['precision']:.0%} right in cross-validation for {left - unmeasured:,}; "
               f"{unmeasured:,} unmeasured")  # fmt: skip
    else:
        how = f"{g['precision']:.0%} right in cross-validation"
    return f"→ {g['value']} · {data.plural(left, 'face')} · confidence {conf} · {how}"


def _vouched(groups: pd.DataFrame) -> pd.Series:
    """The precision the page vouches for per group: the measured one, 0 where every face
    left is unmeasured."""
    return groups["precision"].where(groups["unmeasured"] < groups["left"], 0.0)


def groups_view(ws: Workspace, store: LabelStore, field: str, min_precision: float) -> None:
    groups, faces = open_groups(ws, store, field)
    groups_all = groups
    if not groups.empty:
        groups = groups[_vouched(groups) >= min_precision].reset_index(drop=True)
    if groups.empty:
        st.info(_no_groups(ws, field, len(groups_all), min_precision))
        return
    st.caption(f"{data.plural(len(groups), 'suggestion group')}, "
               f"{data.plural(int(groups['left'].sum()), 'face')}: biggest and surest first; "
               "in each group the least sure faces come first.")  # fmt: skip
    options = [int(v) for v in groups["group"]]
    if st.session_state.get(SK.group_pick) not in options:
        st.session_state.pop(SK.group_pick, None)  # a new run or an emptied group: the best
    titles = {int(r["group"]): f"{i + 1}. {group_title(r)}"  # unique: chunks look alike
              for i, (_, r) in enumerate(groups.iterrows())}  # fmt: skip
    pick = st.selectbox("Suggestion group", options, index=0, key=SK.group_pick,
                        format_func=titles.get)  # fmt: skip
    g = groups.set_index("group").loc[pick]
    members = faces[faces["group"] == pick].sort_values("rank")
    ids = members["face_id"].tolist()
    shown = ids[:PAGE_SIZE]
    n_checked = int(g["n_checked"])
    measured = dict(zip(members["face_id"], members["measured"].astype(bool), strict=True))
    n_unmeasured = int(g["unmeasured"])  # of the group's open faces, as open_groups counted
    if n_unmeasured < len(ids):
        st.markdown(
            f"**In cross-validation {g['precision']:.0%} of faces like these were right** "
            f"(measured on {n_checked:,} labeled faces the model had not seen; at least "
            f"{g['lower']:.0%} with 95 % confidence). On real photos labeled group by group, "
            "such faces held up to 4 points fewer at 100 labels, as many as shown from 300."
        )
    if n_unmeasured:
        st.markdown(
            f"**{data.plural(n_unmeasured, 'face')} of this group "
            f"{'is' if n_unmeasured == 1 else 'are'} unlike every labeled face**: no precision "
            "was measured on faces like them, and on real photos labeled group by group such "
            "faces were right far less often than the measured number says. Marked "
            ":orange[unmeasured], never pre-ticked: look at each."
        )
    if g["pretick"] and n_unmeasured < len(ids):
        st.caption("Pre-ticked: that precision holds up for the measured faces. Untick the "
                   f"faces that are not '{g['value']}' (the least sure are first).")  # fmt: skip
    else:
        st.caption("Not pre-ticked: no measured precision high and certain enough to "
                   f"vouch for. Tick the faces that are '{g['value']}'.")  # fmt: skip
    conf = dict(zip(members["face_id"], members["confidence"], strict=True))
    ticked = components.thumb_grid(
        ws, shown, prefix=f"{REVIEW_PREFIX}{pick}_",
        checked=lambda f: bool(g["pretick"]) and measured[f],
        captions=lambda f: f"{conf[f]:.2f}" if measured[f] else f":orange[{conf[f]:.2f} unmeasured]",
    )  # fmt: skip
    value = str(g["value"])
    shown_labels = data.labels(ws, field)  # the group's faces were unlabeled when drawn
    b1, b2, b3 = st.columns(3)
    b1.button(
        f"Accept {len(ticked)} ticked as {value}", key=K.review_accept_btn,
        disabled=not ticked, on_click=_accept,
        args=(ws, field, plan_assign(ticked, shown_labels, value), False),
    )  # fmt: skip
    b2.button(
        f"Reject {len(ticked)} ticked", key=K.review_reject_btn, disabled=not ticked,
        on_click=_reject, args=(str(ws.labels_db), field, value, ticked),
    )  # fmt: skip
    if g["pretick"] and not n_unmeasured and len(ids) > len(shown):
        b3.button(
            f"Accept all {len(ids):,} of this group", key=K.review_accept_all_btn,
            on_click=_accept, args=(ws, field, plan_assign(ids, shown_labels, value), False),
        )  # fmt: skip


def _no_groups(ws: Workspace, field: str, n_open: int, min_precision: float) -> str:
    n_faces, n_labels = len(data.faces(ws)), len(data.labels(ws, field))
    every = f"Every face is labeled for {field}: nothing left to review."
    if not n_open and n_faces and n_labels >= n_faces:
        return every
    if step.read_status(ws, field)["state"] == "running":
        return ("Suggesting in the background: the groups appear here when the run ends "
                "(this page refreshes by itself). Keep labeling meanwhile.")  # fmt: skip
    if n_open:
        return (f"{data.plural(n_open, 'suggestion group')} below the minimum precision of "
                f"{min_precision:.0%}: lower it to see them.")  # fmt: skip
    if step.load_meta(ws, field) is None:
        return _nothing_yet(ws, field, n_labels)
    if n_labels >= n_faces:  # left for an empty workspace: the first check wants faces
        return every
    return ("Every suggestion of the last Suggest run was accepted, rejected or labeled "
            "since. Press **Suggest** for new ones.")  # fmt: skip


def _accept(ws: Workspace, field: str, plan: AssignPlan, relabel: bool) -> None:
    """Label the faces of ``plan`` (made when the page was drawn) with its value, one event;
    faces labeled by anyone since are left, and the banner says how many and whose."""
    result = components.write_plan(ws, plan, field, "suggestion", relabel=relabel,
                                   announce=False)  # fmt: skip
    if result is None:  # refused: write_plan queued the store's one line as an error
        return
    state.clear_widget_keys(REVIEW_PREFIX)
    value, n = plan.value, len(result.changed)
    did = "Relabeled" if relabel else "Accepted"
    text = (f"{did} {data.plural(n, 'face')} as **{value}** ({field}), event "
            f"{result.event_id}. Undo takes it back." if n else "Nothing changed.")  # fmt: skip
    if result.meanwhile:
        text += f" {result.meanwhile_text()}."
    _say(text, "warning" if result.meanwhile else "success", db=str(ws.labels_db))


def _reject(db: str, field: str, value: str, face_ids: list[str]) -> None:
    items = pd.DataFrame({"face_id": face_ids, "value": value})
    if not _rejected(db, items, field, "suggestion"):
        return
    state.clear_widget_keys(REVIEW_PREFIX)
    _say(f"Rejected {data.plural(len(face_ids), 'suggestion')} of **{value}**; they stay "
         "unlabeled and are not suggested again.", "info", db)  # fmt: skip


# --- suspected label errors --------------------------------------------------------------------


def suspects_view(ws: Workspace, store: LabelStore, field: str) -> None:
    # 'labeler train' and the Suggest step may both flag a face: show it once, surest first
    items = store.suspects(field, pending=True).drop_duplicates("face_id")
    if items.empty:
        st.info("No suspected label errors. They are raised only on out-of-fold evidence, "
                "for classes with enough labels, and for at most 2 % of the faces.")  # fmt: skip
        return
    values = sorted(items["suggested"].unique())
    pick = st.selectbox("Suggested value", values, key=SK.suspect_value,
                        format_func=lambda v: f"{v} ({(items['suggested'] == v).sum()})")  # fmt: skip
    part = items[items["suggested"] == pick].iloc[:PAGE_SIZE]
    st.caption("A model that never saw these faces contradicts their label. Nothing is "
               "pre-ticked: how often such a doubt is right cannot be measured from the labels "
               "themselves. Tick the ones that are really wrong.")  # fmt: skip
    info = {r.face_id: f"{r.given} → {r.suggested} ({r.score:.2f})" for r in part.itertuples()}
    ticked = components.thumb_grid(ws, part["face_id"].tolist(), prefix=f"{REVIEW_PREFIX}s_",
                                   checked=lambda f: False, captions=info.get)  # fmt: skip
    b1, b2 = st.columns(2)
    shown_labels = data.labels(ws, field)  # each ticked face still has its given label
    b1.button(
        f"Relabel {len(ticked)} ticked as {pick}", key=K.review_accept_btn, disabled=not ticked,
        on_click=_accept, args=(ws, field, plan_assign(ticked, shown_labels, str(pick)), True),
    )  # fmt: skip
    chosen = part[part["face_id"].isin(ticked)]
    b2.button(
        f"Keep {len(ticked)} ticked as labeled", key=K.review_reject_btn, disabled=not ticked,
        on_click=_keep, args=(str(ws.labels_db), field, chosen),
    )  # fmt: skip


def _rejected(db: str, items: pd.DataFrame, field: str, kind: str) -> bool:
    """Reject ``items`` (suggestions or suspects); False, with the one line shown, when the
    store refuses."""
    try:
        LabelStore(db).reject(items, field, annotator=state.require_annotator(), kind=kind)
    except LabelerError as exc:
        _say(str(exc), "error")
        return False
    return True


def _keep(db: str, field: str, items: pd.DataFrame) -> None:
    if not _rejected(db, items, field, "suspect"):
        return
    state.clear_widget_keys(REVIEW_PREFIX)
    _say(f"Kept {data.plural(len(items), 'label')} as they are; they are not flagged again.",
         "info", db)  # fmt: skip
