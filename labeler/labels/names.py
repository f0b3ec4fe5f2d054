"""What a label value, a field name and an annotator name may be, and how to print them.

Checked where the text enters (the schema edits, ``LabelStore.assign``, ``labeler annotators
add``, the sign-in form), so nothing stored can break a later step:

* **Label values and field names** (:func:`check_label_name`): ``labeler export`` names one
  ImageFolder class folder per value, so a value must be a folder name every common file
  system accepts and that no other value maps onto: 1 to :data:`MAX_LABEL_LEN` characters,
  no control or invisible characters, none of ``/ \\ : * ? " < > |`` or ``,`` (the Settings
  page splits values at commas), not ``.``/``..``, no leading or trailing dot, not a Windows
  device name (``CON``, ``NUL``, ``COM1``...). Surrounding spaces are stripped.
* **Annotator names** (:func:`annotator_name`): NFKC-normalised (fullwidth ``Ａｎｎ`` is
  ``Ann``), inner whitespace collapsed, 1 to :data:`MAX_ANNOTATOR_LEN` characters, no
  control characters, bidi overrides or invisible characters (a name carrying U+202E prints
  reversed in a terminal and in the app's tables). :func:`confusable_key` maps names that
  look alike (case, Cyrillic and Greek letters that look Latin, ``0``/``O``, ``1``/``l``/``I``)
  onto one key; :func:`confusable_with` finds an existing name a new one could pass for.
* :func:`printable` shows any stored text with its control and invisible characters escaped
  (``'Ann\\u202eeL'``), for names that reached a store before these checks.

>>> check_label_name("  on chin ", "value")
'on chin'
>>> annotator_name("Ａｎｎ  Lee")
'Ann Lee'
>>> confusable_with("Аnn", ["Ann", "Bob"])  # a Cyrillic А
'Ann'
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from labeler.errors import InputError

#: A label value or field name has at most this many characters: it is shown on chips,
#: buttons and chart legends, and ``labeler export`` names a folder after each value; file
#: systems allow 255 bytes in a name and 60 characters are at most 240 bytes of UTF-8.
MAX_LABEL_LEN = 60
#: An annotator name has at most this many characters (the app's name and sign-in boxes
#: allow as many: ``labeler.ui.state.MAX_NAME`` and ``labeler.ui.access.MAX_NAME`` are this).
MAX_ANNOTATOR_LEN = 40

#: Characters a Windows, macOS or Linux folder name cannot hold (export writes one folder per
#: value), plus the comma that separates values on the Settings page.
FOLDER_UNSAFE = '/\\:*?"<>|,'
#: Names Windows refuses as a folder, with or without an extension (``con``, ``nul.txt``).
WINDOWS_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)]
)
#: Bidirectional embeddings, overrides and isolates: they reorder the text printed after them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Format characters that join letters in some scripts (Persian, Indic): allowed in names.
JOINERS = frozenset("\u200c\u200d")

#: Capital I (Latin, Cyrillic, Greek) and small l look the same in sans-serif fonts.
CAPITAL_I = str.maketrans(dict.fromkeys("I\u0406\u0399\u04c0", "l"))
#: Letters of other scripts (after case folding) that look like a Latin letter or digit in
#: common fonts, for :func:`confusable_key`. Deliberately small: the lookalikes people meet.
CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
        "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w",
        # Greek
        "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x",
        # digits and strokes that pass for letters
        "0": "o", "1": "l", "|": "l", "!": "l",
    }
)  # fmt: skip


def shown(text: str, limit: int = 40) -> str:
    """``repr`` of ``text`` cut to ``limit`` characters (with its length when cut)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _bad_char(text: str, *, joiners_ok: bool = False) -> str | None:
    """The first control, invisible or unpaired-surrogate character of ``text``, as
    ``U+XXXX``, or None. ``joiners_ok`` lets ZWNJ/ZWJ through (names in scripts that need
    them)."""
    for c in text:
        cat = unicodedata.category(c)
        if (
            c in BIDI_CONTROLS
            or cat in ("Cc", "Cs", "Co", "Zl", "Zp")
            or (cat == "Cf" and not (joiners_ok and c in JOINERS))
        ):
            return f"U+{ord(c):04X}"
    return None


def check_label_name(name: object, what: str = "value") -> str:
    """``name`` (a label value, ``what="value"``, or field name, ``what="field"``) stripped
    of surrounding spaces; :class:`InputError` naming the text and the rule it breaks.

    >>> check_label_name("a/b")
    Traceback (most recent call last):
    ...
    labeler.errors.InputError: label value 'a/b' has '/': export names a folder after each value, and folder names cannot hold any of / \\ : * ? " < > | ,; pick another name
    """  # noqa: E501
    text = str(name).strip()
    label = f"label {what} {shown(text)}"
    if not text:
        raise InputError(f"label {what} {shown(str(name))} must be non-empty; type a name")
    bad = _bad_char(text)
    if bad is not None:
        raise InputError(
            f"{label} has the control or invisible character {bad}; type the name again without it"
        )
    if len(text) > MAX_LABEL_LEN:
        raise InputError(
            f"{label} is longer than {MAX_LABEL_LEN} characters (export names a folder after "
            "each value); pick a shorter name"
        )
    unsafe = next((c for c in text if c in FOLDER_UNSAFE), None)
    if unsafe is not None:
        raise InputError(
            f"{label} has {unsafe!r}: export names a folder after each value, and folder "
            f"names cannot hold any of {' '.join(FOLDER_UNSAFE)}; pick another name"
        )
    if text.startswith(".") or text.endswith("."):
        raise InputError(
            f"{label} starts or ends with '.': as a folder name it would be hidden, or changed "
            "by Windows; pick another name"
        )
    if text.split(".")[0].rstrip().upper() in WINDOWS_DEVICE_NAMES:
        raise InputError(
            f"{label} is a name Windows keeps for a device and refuses as a folder; pick "
            "another name"
        )
    return text


def annotator_name(name: object) -> str:
    """``name`` as stored with labels and sign-ins: NFKC-normalised, inner whitespace collapsed;
    :class:`InputError` naming it when it is empty, too long or carries a control, bidi or
    invisible character.

    >>> annotator_name("Ann\\u202eeL")
    Traceback (most recent call last):
    ...
    labeler.errors.InputError: annotator name 'Ann\\u202eeL' has the control or invisible character U+202E (it would change or hide what is printed with the name); type the name without it
    """  # noqa: E501
    raw = str(name)
    text = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not text:
        raise InputError(
            f"annotator name {shown(raw)} is empty; type your name (the app's Settings page, "
            "or 'labeler annotators add NAME')"
        )
    bad = _bad_char(text, joiners_ok=True)
    if bad is not None:
        raise InputError(
            f"annotator name {shown(raw)} has the control or invisible character {bad} (it "
            "would change or hide what is printed with the name); type the name without it"
        )
    if len(text) > MAX_ANNOTATOR_LEN:
        raise InputError(
            f"annotator name {shown(raw)} is longer than {MAX_ANNOTATOR_LEN} characters; "
            "use a shorter name"
        )
    return text


def confusable_key(name: str) -> str:
    """A key equal for names that look alike: NFKC, ``I`` as ``l``, case-folded, Cyrillic and
    Greek lookalikes as Latin, digits ``0``/``1`` as ``o``/``l``, joiners and spaces dropped.

    >>> confusable_key("Ann") == confusable_key("ANN") == confusable_key("Аnn")
    True
    """
    text = unicodedata.normalize("NFKC", str(name)).translate(CAPITAL_I).casefold()
    text = "".join(c for c in text if c not in JOINERS and not c.isspace())
    return text.translate(CONFUSABLES)


def confusable_with(name: str, existing: Iterable[str]) -> str | None:
    """The first of ``existing`` that ``name`` looks like (equal :func:`confusable_key`) but is
    not spelled the same as, or None."""
    key = confusable_key(name)
    return next((e for e in existing if e != name and confusable_key(e) == key), None)


def printable(text: object) -> str:
    """``text`` with every control, bidi or invisible character escaped as repr does
    (``\\x1b``, ``\\u202e``): safe to print in a terminal, a log or a table.

    >>> printable("Ann\\x1b[2J")
    'Ann\\\\x1b[2J'
    """
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
