"""Names and label writes checked in the app (issue #30, point 6, the UI's part): a bad
annotator name is refused with one error line and never kept, a label write the store
refuses shows its one line instead of an exception page, a name is shown as typed (no
Markdown), and a hand-built schema goes through the same checks as the Settings page."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from synthetic import synthetic_workspace

from labeler.errors import InputError
from labeler.labels import LabelStore
from labeler.labels.db import LabelStoreError
from labeler.labels.schema import DEFAULT_SCHEMA, LabelField, LabelSchema
from labeler.ui.state import ENV_ANNOTATOR, ENV_WORKSPACE, QUERY_ANNOTATOR, K

APP = str(Path(__file__).resolve().parents[1] / "labeler" / "ui" / "app.py")
FIELD = "mask_state"
#: Names annotator_name refuses, and what the one error line says. The boxes take 40
#: characters; three U+FDFA are 54 after NFKC.
BAD_NAMES = {"Ann\u202eeL": "U+202E", "\x1b[2JEve": "U+001B", "\ufdfa" * 3: "longer than 40"}
MARKDOWN_NAME = "**x** [a](http://e)"
#: Characters Markdown (and Streamlit's :color[...] directives) give a meaning.
MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:=")


@pytest.fixture(scope="module")
def ws_template(tmp_path_factory):
    return synthetic_workspace(tmp_path_factory.mktemp("tmpl") / "ws", n_faces=24, n_clusters=2)


@pytest.fixture
def ws(tmp_path, ws_template, monkeypatch):
    import shutil

    from labeler.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(ws_template.root, root)
    monkeypatch.setenv(ENV_WORKSPACE, str(root))
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    return Workspace.open(root)


def run_app(page: str | None = None, *, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def one_error_line(at: AppTest, says: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    msgs = errors(at)
    assert len(msgs) == 1 and "\n" not in msgs[0] and says in msgs[0], msgs


def literal(markdown: str) -> str:
    """The text ``markdown`` shows when every Markdown character in it is escaped (else fail):
    the backslash escapes taken off."""
    shown, i = [], 0
    while i < len(markdown):
        c = markdown[i]
        if c == "\\":
            assert i + 1 < len(markdown) and markdown[i + 1] in MD_SPECIAL, markdown
            shown.append(markdown[i + 1])
            i += 2
            continue
        assert c not in MD_SPECIAL, (c, markdown)
        shown.append(c)
        i += 1
    return "".join(shown)


def who_caption(at: AppTest) -> str:
    line = next(c.value for c in at.caption if c.value.startswith("Labeling as "))
    m = re.fullmatch(r"Labeling as \*\*(.*)\*\* · workspace \*\*(.*)\*\*", line)
    assert m, line
    return literal(m.group(1))


# --- the name boxes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_name_prompt_refuses_a_bad_name_in_one_line(ws, monkeypatch, name):
    monkeypatch.delenv(ENV_ANNOTATOR)
    at = run_app()
    at.text_input(key=K.name_prompt).set_value(name).run()
    at.button(key=K.name_prompt_btn).click().run()
    one_error_line(at, BAD_NAMES[name])
    assert at.header[0].value == "Who is labeling?"  # still asked: no page without a name
    assert K.annotator not in at.session_state
    assert QUERY_ANNOTATOR not in at.query_params
    # corrected, it is taken (NFKC, spaces collapsed) and the error is gone
    at.text_input(key=K.name_prompt).set_value("  Ａnn   Lee ").run()
    at.button(key=K.name_prompt_btn).click().run()
    assert not at.exception and not errors(at)
    assert at.header[0].value == "Overview" and at.session_state[K.annotator] == "Ann Lee"


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_settings_name_box_refuses_a_bad_name_in_one_line(ws, name):
    at = run_app("views/settings.py")
    at.text_input(key=K.settings_annotator).set_value(name).run()
    one_error_line(at, BAD_NAMES[name])
    assert at.session_state[K.annotator] == "tester"  # the name in use stays
    assert not at.success
    at.switch_page("views/overview.py").run()
    assert who_caption(at) == "tester"


def test_a_bad_name_in_the_url_is_not_taken(ws, monkeypatch):
    monkeypatch.delenv(ENV_ANNOTATOR)
    at = run_app(query={QUERY_ANNOTATOR: "Eve\x00"})
    assert at.header[0].value == "Who is labeling?"
    assert K.annotator not in at.session_state


# --- label writes the store refuses ----------------------------------------------------------


def old_bad_value(ws, value: str = "a/b") -> None:
    """A value an older labeler let into the schema (the store refuses new labels with it)."""
    LabelStore(ws.labels_db).schema()  # the store exists
    con = sqlite3.connect(ws.labels_db)
    with con:
        con.execute(
            "INSERT INTO label_values(field, value, position) VALUES (?, ?, 99)", (FIELD, value)
        )
    con.close()


def test_a_label_write_the_store_refuses_shows_one_error(ws):
    old_bad_value(ws)
    at = run_app("views/cluster_view.py")
    at.selectbox(key=K.assign_value).set_value("a/b").run()
    at.button(key=K.assign_btn).click().run()
    one_error_line(at, "from an older labeler")
    assert "'a/b' has '/'" in errors(at)[0]
    assert LabelStore(ws.labels_db).history(limit=None).empty
    # the page still works: a valid value labels the same faces
    at.selectbox(key=K.assign_value).set_value("correct").run()
    at.button(key=K.assign_btn).click().run()
    assert not at.exception and not errors(at)
    assert set(LabelStore(ws.labels_db).current_values(FIELD).values()) == {"correct"}


@pytest.mark.parametrize("page", ["views/cluster_view.py", "views/review.py"])
def test_undo_the_store_refuses_shows_one_error(ws, monkeypatch, page):
    def broken(self, annotator):
        raise LabelStoreError(f"{self.db_path} is locked by another program; close it")

    monkeypatch.setattr(LabelStore, "undo", broken)
    at = run_app(page)
    at.button(key=K.undo_btn).click().run()
    one_error_line(at, "is locked by another program")


# --- names shown as typed --------------------------------------------------------------------


def test_a_name_with_markdown_is_shown_literally(ws, monkeypatch):
    monkeypatch.setenv(ENV_ANNOTATOR, MARKDOWN_NAME)
    at = run_app()
    assert who_caption(at) == MARKDOWN_NAME
    # taken in Settings: the confirmation shows it as typed too
    monkeypatch.setenv(ENV_ANNOTATOR, "tester")
    at = run_app("views/settings.py")
    at.text_input(key=K.settings_annotator).set_value(MARKDOWN_NAME).run()
    assert not at.exception and at.session_state[K.annotator] == MARKDOWN_NAME
    msg = at.success[0].value
    assert msg.startswith("Labels are now given as **") and msg.endswith("**.")
    assert literal(msg.removeprefix("Labels are now given as **")[: -len("**.")]) == MARKDOWN_NAME
    at.switch_page("views/overview.py").run()
    assert who_caption(at) == MARKDOWN_NAME


# --- LabelStore.set_schema -------------------------------------------------------------------


def plus(*fields: LabelField) -> LabelSchema:
    return LabelSchema((*DEFAULT_SCHEMA.fields, *fields))


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        (plus(LabelField("glasses", ("none", "sun/clip"))), "label value 'sun/clip' has '/'"),
        (plus(LabelField("gl\x00sses", ("none",))), r"label field 'gl\x00sses' has the"),
        (plus(LabelField("glasses", ("none", "x" * 61))), "longer than 60"),
        (plus(LabelField("con", ("none",))), "Windows"),
        (plus(LabelField(FIELD, ("again",))), f"label field '{FIELD}' is given twice"),
    ],
)
def test_set_schema_refuses_a_bad_hand_built_schema(tmp_path, schema, says):
    store = LabelStore(tmp_path / "labels.db")
    before = store.schema()
    with pytest.raises(InputError) as err:
        store.set_schema(schema)
    msg = str(err.value)
    assert says in msg and msg.isprintable(), msg
    assert store.schema() == before  # nothing written


def test_set_schema_strips_names_and_keeps_values_an_older_labeler_let_in(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.schema()  # the store exists
    con = sqlite3.connect(store.db_path)
    with con:
        con.execute(
            "INSERT INTO label_values(field, value, position) VALUES (?, 'a/b', 99)", (FIELD,)
        )
    con.close()
    old = store.schema()
    assert "a/b" in old.values(FIELD)
    store.set_schema(
        LabelSchema((*old.fields, LabelField(" glasses ", (" none", "sun ", "none"), True)))
    )
    new = store.schema()
    assert new.values(FIELD) == old.values(FIELD)  # 'a/b' kept: labels with it still read
    assert new.values("glasses") == ("none", "sun")
    with pytest.raises(InputError, match="'c/d' has '/'"):
        store.set_schema(
            LabelSchema(tuple(LabelField(f.name, (*f.values, "c/d")) for f in new.fields))
        )
