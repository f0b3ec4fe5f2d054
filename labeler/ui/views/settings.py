"""Settings: the annotator's name and the label schema (fields and their values)."""

from __future__ import annotations

import streamlit as st

from labeler.errors import InputError
from labeler.ui import auth, components, data, state
from labeler.ui.state import K

ws = state.workspace()
st.header("Settings", divider="gray")
state.show_flash()
store = data.store(ws)

st.subheader("Annotator")
if auth.required():  # signed in over the network: the name is the sign-in's
    auth.account_section()
else:
    if K.settings_annotator not in st.session_state:
        st.session_state[K.settings_annotator] = state.annotator() or ""
    typed = st.text_input(
        "Your name (stored with every label you give; Undo acts on your own labels)",
        key=K.settings_annotator,
        max_chars=state.MAX_NAME,
    )
    if typed.strip():  # an emptied box keeps the name in use
        try:
            name = state.clean_name(typed)
        except InputError as exc:  # one line; the name in use stays
            st.error(str(exc))
        else:
            if name != state.annotator():
                state.set_annotator(name)
                st.success(f"Labels are now given as **{auth.markdown_text(name)}**.")


def _add_value(field_name: str) -> None:
    key = f"new_value_{field_name}"
    new = str(st.session_state.get(key, "")).strip()
    if not new:
        return
    try:
        store.add_value(field_name, new)
        state.flash(f"Added {new!r} to {field_name}.")
        st.session_state[key] = ""
    except ValueError as exc:
        state.flash(str(exc), "error")


def _add_field() -> None:
    name = str(st.session_state.get(K.new_field_name, "")).strip()
    values = str(st.session_state.get(K.new_field_values, ""))
    try:
        store.add_field(name, [v for v in values.split(",") if v.strip()])
        state.flash(f"Added field {name!r}.")
        st.session_state[K.new_field_name] = ""
        st.session_state[K.new_field_values] = ""
    except ValueError as exc:
        state.flash(str(exc), "error")


st.subheader("Label schema")
st.caption("Each value with one face labeled so (once there is one) and what it means.")
schema = store.schema()
for f in schema.fields:
    with st.container(border=True):
        desc = f.description if f.description and f.description != "optional" else ""
        st.markdown(
            f"**{auth.markdown_text(f.name)}**"
            + (" (optional)" if f.optional else "")
            + (f" — {auth.markdown_text(desc)}" if desc else "")
        )
        if not f.values:
            st.caption("no values yet")
        example = data.examples(ws, f.name)
        cols = st.columns(max(5, len(f.values)))
        for col, v in zip(cols, f.values, strict=False):
            with col:
                fid = example.get(v)
                if fid:
                    st.image(data.crop_bytes(ws, fid) or components.placeholder(), width=96)
                st.markdown(f"**{auth.markdown_text(v)}**")
                help_text = data.VALUE_HELP.get((f.name, v))
                st.caption(help_text or ("no face labeled yet" if not fid else ""))
        c1, c2 = st.columns([3, 1])
        c1.text_input("New value", key=f"new_value_{f.name}", label_visibility="collapsed",
                      placeholder=f"new value for {f.name}")  # fmt: skip
        c2.button("Add value", key=f"add_value_{f.name}", on_click=_add_value, args=(f.name,))

with st.container(border=True):
    st.markdown("**Add a field**")
    c1, c2, c3 = st.columns([1, 2, 1])
    c1.text_input("Field name", key=K.new_field_name)
    c2.text_input("Values, comma separated", key=K.new_field_values)
    c3.button("Add field", key=K.new_field_btn, on_click=_add_field)
