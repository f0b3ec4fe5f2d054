"""Small reusable widgets: thumbnail grids with selection checkboxes, the label picker,
undo/redo buttons. They render and report; they call the label store only on a button."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import streamlit as st

from labeler.labels import LabelSchema, LabelStore
from labeler.ui import data, state
from labeler.ui.state import K
from labeler.workspace import Workspace


@st.cache_data(show_spinner=False)
def placeholder() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 200, 200)).save(buf, format="PNG")
    return buf.getvalue()


def thumb_grid(
    ws: Workspace,
    face_ids: Sequence[str],
    *,
    prefix: str,
    checked: Callable[[str], bool],
    captions: Callable[[str], str] | None = None,
    columns: int = 8,
    on_toggle: Callable[[str, bool], None] | None = None,
) -> list[str]:
    """Show ``face_ids`` as a grid of crops, each with a checkbox keyed ``prefix + face_id``.

    ``checked(face_id)`` gives the initial state of a box not yet in session state;
    ``on_toggle(face_id, value)`` runs when the annotator clicks one. Returns the checked ids.
    """
    out: list[str] = []
    for start in range(0, len(face_ids), columns):
        cols = st.columns(columns)
        for col, fid in zip(cols, face_ids[start : start + columns], strict=False):
            key = f"{prefix}{fid}"
            if key not in st.session_state:
                st.session_state[key] = bool(checked(fid))
            with col:
                st.image(data.crop_bytes(ws, fid) or placeholder(), width="stretch")
                label = captions(fid) if captions else fid[:8]
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


def label_picker(
    schema: LabelSchema, *, key_field: str, key_value: str, cols: Sequence | None = None
) -> tuple[str, str]:
    """Field and value selectors (in ``cols``, two columns, or new ones); the field choice is
    shared across pages."""
    names = schema.names
    current = state.field(names[0])
    col_f, col_v = cols if cols is not None else st.columns([1, 2])
    with col_f:
        fld = st.selectbox(
            "Field",
            names,
            index=names.index(current) if current in names else 0,
            key=key_field,
        )
    state.set_field(fld)
    with col_v:
        value = st.selectbox("Label", list(schema.values(fld)), key=key_value)
    return fld, value


def undo_redo(ws: Workspace) -> None:
    """Undo / redo buttons for the current annotator (logged as events)."""
    c1, c2 = st.columns(2)
    c1.button("Undo", key=K.undo_btn, icon=":material/undo:", width="stretch",
              on_click=_undo_redo, args=(str(ws.labels_db), "undo"))  # fmt: skip
    c2.button("Redo", key=K.redo_btn, icon=":material/redo:", width="stretch",
              on_click=_undo_redo, args=(str(ws.labels_db), "redo"))  # fmt: skip


def _undo_redo(db: str, what: str) -> None:
    store = LabelStore(db)
    eid = store.undo(state.annotator()) if what == "undo" else store.redo(state.annotator())
    done = "Undid" if what == "undo" else "Redid"
    state.flash(f"{done} event {eid}." if eid else f"Nothing to {what}.", "info")


def caption_for(labels: dict[str, str]) -> Callable[[str], str]:
    """Checkbox caption: the face's current label, or a dash."""

    def caption(fid: str) -> str:
        return labels.get(fid, "unlabeled")

    return caption
