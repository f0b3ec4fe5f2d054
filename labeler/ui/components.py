"""Small reusable widgets: thumbnail grids with selection checkboxes, the label picker and
its number keys, undo/redo buttons, the source-photo dialog, the annotator's name prompt.
They render and report; they call the label store only on a button."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext

import streamlit as st

from labeler.errors import LabelerError
from labeler.labels import (
    NOT_A_FACE,
    AssignPlan,
    AssignResult,
    LabelSchema,
    LabelStore,
    plan_assign,
)
from labeler.ui import chart, data, photos, state
from labeler.ui.state import PHOTO_PREFIX, K
from labeler.workspace import Workspace

#: CSS for the whole app: thumbnail captions never break inside a word (they are cut with
#: an ellipsis; the full text is in the tooltip), the keyboard cursor's face is outlined.
_CSS = """
<style>
[data-testid="stCheckbox"] label p { word-break: normal; overflow-wrap: anywhere;
  line-height: 1.25; }
[data-testid="stCheckbox"] label p span { font-size: 0.78rem; }
[class*="st-key-grid_"] [data-testid="stCheckbox"] label p { white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
[class*="st-key-kbcursor_"] { outline: 3px solid #ff4b4b; outline-offset: 2px;
  border-radius: 4px; }
[class*="st-key-face_"] { position: relative; }
[class*="st-key-face_"] [class*="st-key-photo_"] { position: absolute; top: 3px; right: 3px;
  width: auto !important; z-index: 2; }
[class*="st-key-face_"] [class*="st-key-photo_"] button { min-height: 1.5rem;
  padding: 0 0.2rem; background: rgba(255, 255, 255, 0.8); border-radius: 4px; }
</style>
"""


#: The page's keyboard shortcuts (number keys, Enter, Space, Left/Right, P) are off while a
#: dialog is open (Enter must not assign behind the source photo) and must work wherever
#: the last click left the focus: on a checkbox (Space would toggle it, and Streamlit ignores
#: shortcuts on inputs), on a button (Enter / Space would click it again), or in a select box
#: just closed. This capture listener hands such a key press to the page instead; text
#: fields and open select boxes keep their keys.
_KEYS_JS = """
<script>
if (!window.__labelerKeys) {
  window.__labelerKeys = true;
  document.addEventListener("keydown", (e) => {
    if (e.isTrusted === false || e.ctrlKey || e.metaKey || e.altKey) return;
    const ours = /^[0-9pP]$/.test(e.key) ||
      ["Enter", " ", "ArrowLeft", "ArrowRight"].includes(e.key);
    if (ours && document.querySelector("[role=dialog]")) {
      // a dialog is open (the source photo): the page behind it takes no keys
      e.stopPropagation();
      return;
    }
    const a = document.activeElement;
    if (!ours || !a || a === document.body) return;
    const role = a.getAttribute("role");
    const closedCombo = role === "combobox" && a.getAttribute("aria-expanded") !== "true";
    const box = a.tagName === "INPUT" && ["checkbox", "radio"].includes(a.type);
    const button = a.tagName === "BUTTON" && !a.closest("[role=dialog]");
    if (!(closedCombo || box || button)) return;
    e.preventDefault();
    e.stopPropagation();
    a.blur();
    document.body.dispatchEvent(new KeyboardEvent("keydown", {
      key: e.key, code: e.code, keyCode: e.keyCode, bubbles: true, cancelable: true}));
  }, true);
}
</script>
"""


def style() -> None:
    st.html(_CSS)
    st.html(_KEYS_JS, unsafe_allow_javascript=True)


@st.cache_data(show_spinner=False)
def placeholder() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 200, 200)).save(buf, format="PNG")
    return buf.getvalue()


# --- who is labeling ---------------------------------------------------------------------------


def name_prompt() -> None:
    """Ask for the annotator's name (first visit of this browser); the router stops after."""
    st.header("Who is labeling?")
    st.markdown(
        "Your name goes with every label you give, and **Undo** / **Redo** act on your own "
        "labels only, so each person needs their own. This browser remembers it."
    )
    with st.form("name_form", border=False):
        st.text_input("Your name", key=K.name_prompt, max_chars=state.MAX_NAME)
        st.form_submit_button("Start labeling", type="primary", key=K.name_prompt_btn,
                              on_click=_take_name)  # fmt: skip
    state.show_flash()  # why the last name was refused


def _take_name() -> None:
    """Form callback: take the typed name, or say in one line why not (nothing stored)."""
    try:
        state.set_annotator(st.session_state.get(K.name_prompt, ""))
    except LabelerError as exc:
        state.flash(str(exc), "error")


def who_bar(ws: Workspace, name: str) -> None:
    """One line at the top of every page: who labels, in which workspace (both shown as
    typed: a name like ``**x** [a](http://e)`` is no bold and no link)."""
    from labeler.ui import auth

    c1, c2 = st.columns([6, 1], vertical_alignment="center")
    c1.caption(
        f"Labeling as **{auth.markdown_text(name)}** · workspace "
        f"**{auth.markdown_text(ws.root.name)}**",
        help=str(ws.root),
    )

    signed = auth.required()  # signed in: Settings shows the account and Sign out
    c2.page_link("views/settings.py", label="Account" if signed else "Change name",
                 icon=":material/badge:")  # fmt: skip


# --- the thumbnail grid --------------------------------------------------------------------------


def thumb_grid(
    ws: Workspace,
    face_ids: Sequence[str],
    *,
    prefix: str,
    checked: Callable[[str], bool],
    captions: Callable[[str], str] | None = None,
    columns: int = 8,
    on_toggle: Callable[[str, bool], None] | None = None,
    cursor: str | None = None,
    photo_buttons: bool = True,
) -> list[str]:
    """Show ``face_ids`` as a grid of crops, each with a checkbox keyed ``prefix + face_id``
    and a button that shows the face on its source photo.

    ``checked(face_id)`` gives the initial state of a box not yet in session state;
    ``on_toggle(face_id, value)`` runs when the annotator clicks one; ``cursor`` is the face
    the keyboard acts on (outlined; its photo button answers the P key). With
    ``photo_buttons=False`` only the cursor's face has a photo button: a button is the
    costliest element of a cell to redraw (a page of 96 faces settles in about half the
    time without them, ``bench/results/clicks_after.md``). Returns the checked ids.
    """
    out: list[str] = []
    # one row of columns filled in turn (face i in column i % columns): every cell has the
    # same height (captions are cut to one line), so the faces read row by row, with 9
    # layout blocks instead of 9 a row of 8 (the browser redraws every block on a rerun)
    with st.container(key=f"grid_{prefix}"):  # its captions stay on one line (_CSS)
        cols = st.columns(columns)
    for i, fid in enumerate(face_ids):
        col = cols[i % columns]
        key = f"{prefix}{fid}"
        if key not in st.session_state:
            st.session_state[key] = bool(checked(fid))
        label = captions(fid) if captions else fid[:8]
        # one element less a face where no outline is needed (a rerun resends every one)
        box = col.container(key=f"kbcursor_{fid}") if fid == cursor else col
        button = photo_buttons or fid == cursor
        with box:
            # the photo button sits on the crop's corner: the caption keeps the width
            with st.container(key=f"face_{prefix}{fid}", gap=None) if button else nullcontext():
                st.image(data.crop_bytes(ws, fid) or placeholder(), width="stretch")
                if button:
                    st.button("", key=f"{PHOTO_PREFIX}{prefix}{fid}", icon=":material/image:",
                              help="Show the source photo", on_click=open_photo,
                              args=(fid,), type="tertiary",
                              shortcut="P" if fid == cursor else None)  # fmt: skip
            value = st.checkbox(
                label,
                key=key,
                on_change=_toggled if on_toggle else None,
                args=(on_toggle, fid, key) if on_toggle else None,
            )
        if value:
            out.append(fid)
    return out


def _toggled(callback: Callable[[str, bool], None], face_id: str, key: str) -> None:
    callback(face_id, bool(st.session_state[key]))


# --- the source photo ----------------------------------------------------------------------------


def open_photo(face_id: str) -> None:
    """Button callback: show ``face_id``'s source photo in a dialog on this run."""
    state.inspect(face_id)
    st.session_state["_inspect_open"] = True


def photo_dialog(ws: Workspace) -> None:
    """Open the source-photo dialog if a photo button was clicked on this run."""
    if st.session_state.pop("_inspect_open", False) and state.inspected():
        _photo_dialog(ws, state.inspected())


@st.dialog("Source photo", width="large")
def _photo_dialog(ws: Workspace, face_id: str) -> None:
    show_source(ws, face_id)


def show_source(ws: Workspace, face_id: str) -> None:
    """The face's source photo with its box, and where the face came from."""
    sp = photos.source_photo(ws, face_id)
    if sp is None:
        st.warning(f"Face {face_id} is not in this workspace's faces table.")
        return
    c1, c2 = st.columns([3, 1])
    with c1:
        if sp.jpeg is None:
            st.warning(f"The photo {sp.path} cannot be read any more (moved or deleted?).")
        else:
            # small photos (web crops of 160 px) shown at 480 px at least, big ones fit
            st.image(sp.jpeg, width=int(min(900, max(480, sp.width))))
    with c2:
        st.image(data.crop_bytes(ws, face_id) or placeholder(), caption="aligned crop")
    facts = {
        "file": sp.path,
        "face": face_id,
        "detector": sp.detector,
        "score": f"{sp.score:.2f}",
        "whole-image fallback": "yes: no face was found, the whole image stands in"
        if sp.whole_image
        else "no",
        "rotation": f"photo turned {sp.rotation}° clockwise to find the face"
        if sp.rotation
        else "none",
        "box (x0, y0, x1, y1)": ", ".join(f"{v:.0f}" for v in sp.box),
        "photo size": f"{sp.width} x {sp.height}",
    }
    st.markdown("\n".join(f"- **{k}**: `{v}`" for k, v in facts.items()))


# --- labels ------------------------------------------------------------------------------------


def label_values(schema: LabelSchema, fld: str) -> list[str]:
    """The values an annotator can give in ``fld``: the schema's, then ``not_a_face``."""
    return [*schema.values(fld), NOT_A_FACE]


def field_picker(names: Sequence[str], *, key: str) -> str:
    """The label field selector: starts at the field the annotator works on (shared across
    pages, :func:`state.field`) and makes the pick the shared one."""
    current = state.field(names[0])
    fld = st.selectbox(
        "Field", names, index=names.index(current) if current in names else 0, key=key
    )
    state.set_field(fld)
    return fld


def label_picker(
    schema: LabelSchema, *, key_field: str, key_value: str, cols: Sequence | None = None
) -> tuple[str, str]:
    """Field and value selectors (in ``cols``, two columns, or new ones). The field is shared
    across pages; the value is the annotator's last pick for that field (never a silent
    fall back to the first value when a page comes back)."""
    col_f, col_v = cols if cols is not None else st.columns([1, 2])
    with col_f:
        fld = field_picker(schema.names, key=key_field)
    values = label_values(schema, fld)
    last = state.remembered(f"value:{fld}")
    value = st.session_state.get(key_value)
    if value not in values or st.session_state.get(K.value_field) != fld:
        value = last if last in values else values[0]
    # always set before the selectbox is drawn: the Map and the Cluster view draw it with
    # the same key but not as the same widget, so coming from the other page it would start
    # at the first value, whatever the session state says
    st.session_state[key_value] = value
    st.session_state[K.value_field] = fld
    with col_v:
        value = st.selectbox("Label", values, key=key_value, format_func=value_name)
    state.remember(f"value:{fld}", value)
    if value != NOT_A_FACE:
        state.remember(f"safe:{fld}", value)
    return fld, value


def drop_destructive(schema: LabelSchema, *, key_value: str) -> None:
    """Call before :func:`label_picker` when the faces change (another cluster): a
    destructive value (*not a face*) never carries over to them; the picker goes back to
    the last other value picked in the field (or the first)."""
    fld = state.field(schema.names[0])
    if NOT_A_FACE not in (st.session_state.get(key_value), state.remembered(f"value:{fld}")):
        return
    values = label_values(schema, fld)
    safe = state.remembered(f"safe:{fld}")
    safe = safe if safe in values and safe != NOT_A_FACE else values[0]
    st.session_state[key_value] = safe
    state.remember(f"value:{fld}", safe)


def value_name(value: str) -> str:
    return "not a face" if value == NOT_A_FACE else value


def label_keys(schema: LabelSchema, fld: str, *, key_value: str) -> None:
    """One button per value of ``fld``, with number keys 1-9 as shortcuts, and 0 for *not a
    face*: pick the label."""
    values = list(schema.values(fld))[:9]
    cols = st.columns(max(1, len(values)) + 1)
    current = st.session_state.get(key_value)
    keyed = [*enumerate(values, start=1), (0, NOT_A_FACE)]
    for col, (i, v) in zip(cols, keyed, strict=False):
        col.button(f"{i} · {value_name(v)}", key=f"{K.value_key_btn}{i}", shortcut=str(i),
                   width="stretch", type="primary" if v == current else "secondary",
                   on_click=_pick_value, args=(key_value, v))  # fmt: skip


def _pick_value(key_value: str, value: str) -> None:
    st.session_state[key_value] = value


def undo_redo(ws: Workspace, action: Callable[[str, str], None] | None = None) -> None:
    """Undo / redo buttons for the current annotator (logged as events). ``action(db, what)``
    runs on a click (``what`` is ``undo`` or ``redo``); the default flashes the event id."""
    act = action or _undo_redo
    c1, c2 = st.columns(2)
    c1.button("Undo", key=K.undo_btn, icon=":material/undo:", width="stretch",
              on_click=act, args=(str(ws.labels_db), "undo"))  # fmt: skip
    c2.button("Redo", key=K.redo_btn, icon=":material/redo:", width="stretch",
              on_click=act, args=(str(ws.labels_db), "redo"))  # fmt: skip


def revert_run(ws: Workspace) -> None:
    """Make the current cluster run's parent current (undo the last split, move, merge or
    regroup) and say so."""
    from labeler.cluster import edit

    back = edit.revert(ws)
    state.flash(f"Back to run {back}." if back else "Nothing to revert.", "info")


def _undo_redo(db: str, what: str) -> None:
    who = state.require_annotator()
    try:
        store = LabelStore(db)
        eid = store.undo(who) if what == "undo" else store.redo(who)
    except LabelerError as exc:  # a damaged or locked store: one line, no traceback
        state.flash(str(exc), "error")
        return
    done = "Undid" if what == "undo" else "Redid"
    state.flash(f"{done} event {eid}." if eid else f"Nothing to {what}.", "info")


#: Streamlit's markdown colours for label chips, by a value's place in its field.
CHIP_COLORS = ("blue", "green", "orange", "red", "violet", "yellow", "primary")


def chip(value: str | None, order: Sequence[str] = ()) -> str:
    """A label as a coloured chip (markdown): the same value, the same colour, on every page;
    unlabeled faces get plain grey text, *not a face* a grey chip."""
    if value is None:
        return ":gray[unlabeled]"
    if value == NOT_A_FACE:
        return ":gray-background[not_a_face]"
    i = list(order).index(value) if value in order else abs(hash(value))
    return f":{CHIP_COLORS[i % len(CHIP_COLORS)]}-background[{value}]"


def caption_for(labels: dict[str, str], order: Sequence[str] = ()) -> Callable[[str], str]:
    """Checkbox caption: the face's current label as a chip, or "unlabeled"."""

    def caption(fid: str) -> str:
        return chip(labels.get(fid), order)

    return caption


# --- bulk assign: never a silent relabel, never over a label given meanwhile ---------------


def plan_for(
    ws: Workspace, face_ids: Sequence[str], fld: str, value: str,
    labels: Mapping[str, str] | None = None,
) -> AssignPlan:  # fmt: skip
    """The plan a page draws its assign buttons from: ``face_ids`` split against the labels
    the page shows (``labels``, default :func:`data.labels`), with the annotators of the
    labels a Relabel would replace (the button names them). Pass the plan, unchanged, to
    :func:`write_plan` when the button is pressed: it is what the page showed."""
    labels = data.labels(ws, fld) if labels is None else labels
    plan = plan_assign(face_ids, labels, value)
    if not plan.relabel:
        return plan
    owners = {f: who for f, (_, who) in data.store(ws).labels_of(fld, plan.relabel).items()}
    return plan_assign(face_ids, labels, value, owners=owners)


def write_plan(ws: Workspace, plan: AssignPlan, fld: str, source: str, *,
               relabel: bool = False, announce: bool = True) -> AssignResult | None:  # fmt: skip
    """The one label write of every page's bulk action: the faces ``plan`` (made when the
    page was drawn) names, the labeled ones too on ``relabel`` (the explicit choice), by the
    signed-in annotator, checked in the write's transaction
    (:meth:`LabelStore.assign_checked`): a face labeled by anyone since the page was drawn
    is never changed, and the message says how many were left and whose they are.

    ``announce``: flash one sentence of what changed. Returns the result (``event_id`` None
    when no face was left to change); None when nothing was tried (no faces) or the store
    refused (a value an older labeler let in, a damaged or locked store), with the store's
    one line queued as an error."""
    face_ids = plan.faces(relabel=relabel)
    if not face_ids:
        if announce:
            state.flash("Nothing to assign: tick faces and pick a label.", "info")
        return None
    try:
        result = LabelStore(ws.labels_db).assign_checked(
            face_ids, fld, plan.value, seen=plan.seen(relabel=relabel), relabel=relabel,
            annotator=state.require_annotator(), source=source,
        )  # fmt: skip
    except LabelerError as exc:
        state.flash(str(exc), "error")
        return None
    if announce:
        state.flash(result_text(result, fld), "warning" if result.meanwhile else "success")
    return result


def result_text(result: AssignResult, fld: str) -> str:
    """``"Labeled 78 faces mask_state=no_mask (event 12). 5 faces were labeled correct by
    Bea meanwhile and were left as they are."``: what a bulk action did, in one message."""
    n, again = len(result.changed), len(result.relabeled)
    if n:
        more = f"; {data.plural(again, 'face')} of them relabeled" if again else ""
        text = (f"Labeled {data.plural(n, 'face')} {fld}={result.value}{more} "
                f"(event {result.event_id}).")  # fmt: skip
    else:
        text = "Nothing changed."
    if result.meanwhile:
        text += f" {result.meanwhile_text()}."
    return text


def assign_buttons(
    plan: AssignPlan,
    *,
    key: str,
    relabel_key: str,
    on_new: Callable[[], None],
    on_relabel: Callable[[], None],
    shortcut: str | None = "Enter",
    cols: Sequence | None = None,
) -> None:
    """The bulk-assign buttons of a selection: the primary one labels the unlabeled faces
    only (``shortcut``); when some faces have another label, a second button says how many
    and which (``Relabel 58 faces now no_mask``) and is the only way to change them; faces
    that have the value already are left alone. ``on_new`` / ``on_relabel`` do the writes."""
    c1, c2 = cols if cols is not None else st.columns([3, 2])
    n_new = len(plan.new)
    c1.button(
        f"Assign '{value_name(plan.value)}' to {data.plural(n_new, 'unlabeled face')}",
        key=key, type="primary", shortcut=shortcut, width="stretch",
        disabled=n_new == 0, on_click=on_new,
    )  # fmt: skip
    if plan.relabel:
        c2.button(
            f"Relabel {plan.relabel_text()} as '{value_name(plan.value)}'",
            key=relabel_key, width="stretch", on_click=on_relabel,
            help="Changes labels that exist: only with this button, never with Enter.",
        )  # fmt: skip
    notes = []
    if plan.relabel:
        notes.append(f"{data.plural(len(plan.relabel), 'selected face')} keep their label "
                     "unless you relabel them")  # fmt: skip
    if plan.same:
        notes.append(f"{data.plural(len(plan.same), 'selected face')} already "
                     f"{value_name(plan.value)}")  # fmt: skip
    if notes:
        st.caption("; ".join(notes).capitalize() + ".")


# --- the map's hover thumbnail ---------------------------------------------------------------

#: Shows the hovered point's face next to the pointer. Plotly's hover label cannot hold an
#: image, so this listens to the chart's ``plotly_hover`` events: each point's ``customdata``
#: is ``[run row, place in the map sample]``, the latter a cell of the thumbnail sheets that
#: :func:`map_hover_thumbnails` puts (hidden) on the page. Installed once per page; it
#: re-attaches when Streamlit draws a new chart and reads the sheet layout from ``cfg``.
_THUMB_JS = """
<script>
(() => {
  window.__labelerThumbCfg = __CFG__;
  if (window.__labelerThumbs) return;
  window.__labelerThumbs = true;
  const tip = document.createElement("div");
  tip.id = "labeler-map-thumb";
  tip.style.cssText = "position:fixed;z-index:100000;display:none;pointer-events:none;" +
    "border:2px solid #fff;border-radius:4px;box-shadow:0 1px 8px rgba(0,0,0,.45);" +
    "background-repeat:no-repeat;background-color:#ccc";
  document.body.appendChild(tip);
  let mx = 0, my = 0;
  const place = () => {
    const s = window.__labelerThumbCfg.size;
    tip.style.left = Math.max(4, mx - s - 18) + "px";
    tip.style.top = Math.max(4, my - s - 18) + "px";
  };
  const hide = () => { tip.style.display = "none"; };
  document.addEventListener("mousemove", (e) => {
    mx = e.clientX; my = e.clientY;
    if (tip.style.display !== "block") return;
    // off the chart (or the chart was redrawn and is gone): never leave a face behind
    const gd = document.querySelector(".js-plotly-plot");
    const r = gd && gd.getBoundingClientRect();
    if (!r || mx < r.left || mx > r.right || my < r.top || my > r.bottom) { hide(); return; }
    place();
  }, true);
  document.addEventListener("mousedown", hide, true);
  document.addEventListener("scroll", hide, true);
  const attach = () => {
    const gd = document.querySelector(".js-plotly-plot");
    if (!gd) { hide(); return; }
    if (typeof gd.on !== "function" || gd.__labelerThumbs) return;
    gd.__labelerThumbs = true;
    gd.on("plotly_hover", (ev) => {
      const c = window.__labelerThumbCfg;
      const p = ev && ev.points && ev.points[0];
      if (!c || !p || !Array.isArray(p.customdata)) return;
      const k = Number(p.customdata[1]);  // [run row, place in the map sample]
      const img = document.querySelector(".st-key-map_thumbs_" + Math.floor(k / c.per) + " img");
      if (!img || !img.src) return;
      const j = k % c.per, z = c.size / c.cell;
      tip.style.width = tip.style.height = c.size + "px";
      tip.style.backgroundImage = 'url("' + img.src + '")';
      tip.style.backgroundSize = (c.cols * c.cell * z) + "px auto";
      tip.style.backgroundPosition =
        (-(j % c.cols) * c.size) + "px " + (-Math.floor(j / c.cols) * c.size) + "px";
      tip.dataset.point = String(k);
      tip.style.display = "block";
      place();
    });
    gd.on("plotly_unhover", hide);
    gd.on("plotly_selecting", hide);
    gd.on("plotly_relayout", hide);
  };
  setInterval(attach, 300);
})();
</script>
"""

#: How big the hovered face is shown (px).
THUMB_SHOW_SIDE = 128


def map_hover_thumbnails(sheets: chart.ThumbSheets | None) -> None:
    """Put the map's thumbnail sheets on the page (hidden; the browser fetches each once per
    run) and the script that shows the hovered point's face (:data:`_THUMB_JS`)."""
    if sheets is None or not sheets.sheets:
        return
    import json

    st.html("<style>[class*='st-key-map_thumbs_'] { display: none; }</style>")
    for i, sheet in enumerate(sheets.sheets):
        with st.container(key=f"map_thumbs_{i}"):
            st.image(sheet, output_format="JPEG")
    cfg = {"cell": sheets.cell, "cols": sheets.cols, "per": sheets.per_sheet,
           "size": THUMB_SHOW_SIDE}  # fmt: skip
    st.html(_THUMB_JS.replace("__CFG__", json.dumps(cfg)), unsafe_allow_javascript=True)
