"""The layouts other tools load, written by ``labeler export --format`` beside the manifest.

Every format is written into the export's hidden stage folder with ``manifest.csv`` and
``export.json`` and switched in by the same one atomic step (:mod:`labeler.export.manifest`,
:mod:`labeler._swap`); its files are listed in ``export.json`` (``files``) so ``--force``
knows them from the user's. The rows are the manifest's (labeled faces, leak-free splits);
nothing depends on the time of export, so a re-export with the same seed is byte-identical.

=============  ================================================  ================================
format         layout under ``OUT``                              load it with
=============  ================================================  ================================
imagefolder    ``{split}/{label}/{face_id}.jpg``                 ``torchvision ImageFolder(OUT/
               (the default)                                     "train")``; FiftyOne's
                                                                 ``ImageClassificationDirectory
                                                                 Tree`` (``dataset_dir=OUT/train``)
hf             the ImageFolder tree + ``{split}/metadata.jsonl`` ``datasets.load_dataset(
               (``file_name`` + every manifest column)           "imagefolder", data_dir=OUT)``
coco           ``{split}/{image_id}.{ext}`` (the photos) +       ``pycocotools.coco.COCO(json)``;
               ``annotations/instances_{split}.json``            FiftyOne ``COCODetectionDataset``
                                                                 (``data_path=OUT/train``,
                                                                 ``labels_path=`` the json)
label-studio   the ImageFolder tree + ``label_studio_tasks.json``  Label Studio: import the tasks
               + ``label_studio_config.xml``                     into a project with that config
fiftyone       ``{split}/data/{face_id}.jpg`` +                  ``fo.Dataset.from_dir(OUT/train,
               ``{split}/labels.json``                           fo.types.FiftyOneImageClassif
                                                                 icationDataset)``
=============  ================================================  ================================

What each keeps (besides ``manifest.csv``, which every folder export writes and which keeps
everything: path, root, face_id, face_index, box, every field, split, person, label_source,
annotator, time):

=============  =======  ======  ===========  ==========  ======  =========  ===========  ======
format         images   split   ``--field``  all fields  person  box/lmks   suggestions  who/when
=============  =======  ======  ===========  ==========  ======  =========  ===========  ======
imagefolder    crops    folder  folder name  no          no      no         as labels    no
hf             crops    folder  column       columns     column  box        as labels,   columns
                                                                            label_source
coco           photos   file    attribute    attributes  yes     box + 4    as labels,   no
                                                                 keypoints  label_source
label-studio   crops    data    choices      choices     data    no         predictions  no
                                                                            (confidence)
fiftyone       crops    folder  label        no          no      no         label +      no
                                                                            confidence
=============  =======  ======  ===========  ==========  ======  =========  ===========  ======

* **hf**: one ``metadata.jsonl`` per split, never ``metadata.csv`` beside it (``datasets``
  refuses metadata files of two formats in one dataset); every split's file has the same
  columns and types (text, never null), which ``datasets`` requires. ``file_name`` becomes
  the ``image`` column; split folders ``train``/``val``/``test`` are its train, validation
  and test splits.
* **coco**: ``images`` are the source photos (copied, named by ``image_id``; ``width`` and
  ``height`` as EXIF orientation shows them, the frame the boxes are in), ``annotations``
  the exported faces, category ``face`` with keypoints ``left_eye, right_eye, nose, mouth``
  (``v=2``; ``v=0`` and ``0, 0`` for a whole-image face, whose landmarks are a template's),
  ``bbox`` ``[x, y, width, height]``, ``segmentation`` empty, every label field in
  ``attributes`` (``null`` where unlabeled), plus ``face_id``, ``label_source`` and
  ``person``. Faces of a photo that are not exported (unlabeled, not a face) are not in it.
  ``info`` has no date (a re-export stays byte-identical).
* **label-studio**: one task per face; ``data.image`` is
  ``/data/local-files/?d=<OUT's name>/<file>``: start Label Studio with
  ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the folder holding OUT>``, add a local storage
  for OUT (do not sync it: the tasks file holds the tasks), create the project with
  ``label_studio_config.xml`` (one single-choice block per field, ``not_a_face`` included)
  and import ``label_studio_tasks.json``. Human labels are ``annotations``; labeler's
  suggestions (every field, every method) are ``predictions`` (pre-annotations): one per
  method, ``model_version`` the method, each result with its ``score`` (the confidence) and
  the prediction's ``score`` its lowest (Label Studio sorts tasks by it). ``labeler labels
  import`` reads the project's JSON export back (``data.face_id``).
* **fiftyone**: FiftyOne's ``FiftyOneImageClassificationDataset`` per split: ``classes``
  (the field's values) and ``labels`` (``{face_id: label}``; a suggestion as ``{"label",
  "confidence"}``). It holds the one ``--field``; load more fields from ``manifest.csv``.
  The plain imagefolder export is FiftyOne's ``ImageClassificationDirectoryTree`` already.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import pandas as pd

from labeler.errors import InputError

if TYPE_CHECKING:
    from labeler.workspace import Workspace

#: Formats that write a folder of images (the others write the manifest alone).
TREE_FORMATS = ("imagefolder", "hf", "coco", "label-studio", "fiftyone")
#: Formats that write a table.
TABLE_FORMATS = ("csv", "parquet")
LS_TASKS = "label_studio_tasks.json"
LS_CONFIG = "label_studio_config.xml"
#: Files a format writes at the top of ``--out`` (besides manifest and export.json).
TOP_FILES = (LS_TASKS, LS_CONFIG)
#: Folders a format writes at the top of ``--out`` besides the split folders.
TOP_DIRS = ("annotations",)
#: The manifest columns every format's records keep, in this order, around the fields.
KEY_COLUMNS = ("face_id", "split", "person", "path", "root", "face_index", "x0", "y0", "x1", "y1")
TRAIL_COLUMNS = ("label_source", "annotator", "time")
#: Column names ``datasets`` reads as image files: a field may not be called so.
HF_RESERVED = ("image", "file_name", "file_names")
#: The COCO category of every annotation, with labeler's 4 landmarks as keypoints.
COCO_SKELETON = [[1, 2], [1, 3], [2, 3], [3, 4]]


def safe_dirname(label: str) -> str:
    """A class folder's name for ``label`` (the characters a folder cannot hold as ``_``)."""
    bad = '/\\:*?"<>|'
    name = "".join("_" if c in bad else c for c in str(label)).strip() or "_"
    return "_" + name if name in (".", "..") else name


def placer(fmt: str) -> Callable[[str, str, str, str], str]:
    """Where ``fmt`` puts a face's image: ``(split, label, face_id, suffix) -> path`` relative
    to ``OUT``. COCO's photos are named by ``image_id`` (faces of one photo share it)."""
    if fmt == "coco":
        return lambda split, label, face_id, suffix: f"{split}/{face_id.rsplit('_', 1)[0]}{suffix}"
    if fmt == "fiftyone":
        return lambda split, label, face_id, suffix: f"{split}/data/{face_id}{suffix}"
    return lambda split, label, face_id, suffix: f"{split}/{safe_dirname(label)}/{face_id}{suffix}"


def uses_photos(fmt: str, source_images: bool) -> bool:
    """Whether ``fmt`` copies the source photos (COCO always: its boxes are in them)."""
    return fmt == "coco" or bool(source_images)


def write_extras(
    ws: Workspace,
    df: pd.DataFrame,
    stage: Path,
    *,
    fmt: str,
    field: str,
    out_name: str,
) -> list[str]:
    """Write ``fmt``'s files (beyond the images and the manifest) for the manifest ``df``
    (with its ``file`` column) into ``stage``; returns them relative to it, sorted."""
    if fmt == "imagefolder":
        return []
    fields = label_fields(ws, df, field)
    if fmt == "hf":
        files = write_hf(df, stage, fields=fields)
    elif fmt == "coco":
        files = write_coco(ws, df, stage, fields=fields)
    elif fmt == "label-studio":
        files = write_label_studio(ws, df, stage, field=field, fields=fields, out_name=out_name)
    elif fmt == "fiftyone":
        files = write_fiftyone(ws, df, stage, field=field)
    else:
        raise ValueError(f"no writer for format {fmt!r}")
    return sorted(files)


def label_fields(ws: Workspace, df: pd.DataFrame, field: str) -> list[str]:
    """The schema's fields the manifest has columns for (``field`` included), schema order."""
    from labeler.labels import LabelStore

    names = LabelStore(ws.labels_db).schema().names
    return [f for f in dict.fromkeys([*names, field]) if f in df.columns]


def _dump(path: Path, obj: Any) -> None:
    from labeler.workspace import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


def _splits(df: pd.DataFrame) -> list[str]:
    from labeler.export.splits import SPLIT_NAMES

    have = set(df["split"])
    return [s for s in SPLIT_NAMES if s in have] + sorted(have - set(SPLIT_NAMES))


def _record(row: dict, fields: Sequence[str]) -> dict:
    """The manifest row as plain JSON values in a fixed order and fixed types."""
    out: dict[str, Any] = {}
    for col in KEY_COLUMNS:
        value = row[col]
        if col in ("root", "face_index"):
            out[col] = int(value)
        elif col in ("x0", "y0", "x1", "y1"):
            out[col] = float(value)
        else:
            out[col] = str(value)
    for name in fields:
        out[name] = str(row[name] or "")
    for col in TRAIL_COLUMNS:
        out[col] = str(row.get(col, "") or "")
    return out


# --- Hugging Face datasets -----------------------------------------------------------------


def write_hf(df: pd.DataFrame, stage: Path, *, fields: Sequence[str]) -> list[str]:
    """``{split}/metadata.jsonl``: per face ``file_name`` (relative to the split folder) and
    the manifest's columns, one JSON object a line (see the module doc)."""
    clash = [f for f in fields if f in HF_RESERVED or f.endswith(("_file_name", "_file_names"))]
    if clash:
        raise InputError(
            f"label field {clash[0]!r} would be read as an image column by Hugging Face "
            "datasets; export another --format, or rename the field"
        )
    files = []
    for split in _splits(df):
        part = df[df["split"] == split]
        lines = []
        for row in part.to_dict("records"):
            rel = PurePosixPath(row["file"]).relative_to(split).as_posix()
            lines.append(json.dumps({"file_name": rel, **_record(row, fields)}))
        path = stage / split / "metadata.jsonl"
        _write_bytes(path, ("\n".join(lines) + "\n").encode())
        files.append(f"{split}/metadata.jsonl")
    return files


def _write_bytes(path: Path, data: bytes) -> None:
    from labeler._io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


# --- COCO ----------------------------------------------------------------------------------


def coco_category() -> dict:
    from labeler.workspace import LANDMARK_NAMES

    return {
        "id": 1,
        "name": "face",
        "supercategory": "person",
        "keypoints": list(LANDMARK_NAMES),
        "skeleton": COCO_SKELETON,
    }


def _keypoints(landmarks: Any, whole_image: bool) -> tuple[list[float], int]:
    """COCO ``keypoints`` (x, y, v for each landmark) and ``num_keypoints``."""
    import numpy as np

    lm = None if landmarks is None else np.asarray(landmarks, dtype=float).reshape(-1)
    if whole_image or lm is None or lm.size != 8 or not np.isfinite(lm).all():
        return [0.0, 0.0, 0] * 4, 0
    out: list[float] = []
    for i in range(4):
        out += [round(float(lm[2 * i]), 2), round(float(lm[2 * i + 1]), 2), 2]
    return out, 4


def write_coco(ws: Workspace, df: pd.DataFrame, stage: Path, *, fields: Sequence[str]) -> list[str]:
    """``annotations/instances_{split}.json`` in COCO's object-detection and keypoint format
    (see the module doc); the photos are in ``{split}/`` (the ``file`` column)."""
    faces = ws.require_faces().drop_duplicates("face_id").set_index("face_id")
    images = ws.images().drop_duplicates("image_id").set_index("image_id")
    files = []
    for split in _splits(df):
        part = df[df["split"] == split]
        numbers: dict[str, int] = {}
        coco_images, annotations = [], []
        for row in part.to_dict("records"):
            face_id = str(row["face_id"])
            image_id = face_id.rsplit("_", 1)[0]
            if image_id not in numbers:
                numbers[image_id] = len(numbers) + 1
                coco_images.append(
                    {
                        "id": numbers[image_id],
                        "file_name": PurePosixPath(row["file"]).relative_to(split).as_posix(),
                        "width": int(images.at[image_id, "width"]),
                        "height": int(images.at[image_id, "height"]),
                        "labeler_image_id": image_id,
                        "path": str(row["path"]),
                    }
                )
            x0, y0, x1, y1 = (float(row[c]) for c in ("x0", "y0", "x1", "y1"))
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            kps, n_kps = _keypoints(
                faces.at[face_id, "landmarks"], bool(faces.at[face_id, "whole_image"])
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": numbers[image_id],
                    "category_id": 1,
                    "bbox": [x0, y0, w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "segmentation": [],
                    "keypoints": kps,
                    "num_keypoints": n_kps,
                    "attributes": {f: (str(row[f]) or None) for f in fields},
                    "face_id": face_id,
                    "label_source": str(row["label_source"]),
                    "person": str(row["person"]),
                }
            )
        rel = f"annotations/instances_{split}.json"
        _dump(
            stage / rel,
            {
                "info": {
                    "description": f"labeler export, {split} split",
                    "contributor": "labeler",
                    "version": "1.0",
                },
                "licenses": [],
                "images": coco_images,
                "annotations": annotations,
                "categories": [coco_category()],
            },
        )
        files.append(rel)
    return files


# --- Label Studio --------------------------------------------------------------------------


def label_studio_config(ws: Workspace, fields: Sequence[str]) -> str:
    """The labeling config: the image, then one single-choice block per field (its values
    and ``not_a_face``), names as the fields are named (Label Studio's ``from_name``)."""
    from labeler.labels import NOT_A_FACE, LabelStore

    schema = LabelStore(ws.labels_db).schema()
    lines = ["<View>", '  <Image name="image" value="$image" zoom="true"/>']
    for name in fields:
        values = (
            list(dict.fromkeys([*schema.values(name), NOT_A_FACE]))
            if name in schema.names
            else [NOT_A_FACE]
        )
        lines.append(f"  <Header value={quoteattr(name)}/>")
        lines.append(
            f'  <Choices name={quoteattr(name)} toName="image" choice="single" showInline="true">'
        )
        lines += [f"    <Choice value={quoteattr(v)}/>" for v in values]
        lines.append("  </Choices>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def _choice(field: str, value: str, rid: str, score: float | None = None) -> dict:
    out: dict[str, Any] = {
        "id": rid,
        "from_name": field,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [value]},
    }
    if score is not None:
        out["score"] = round(float(score), 6)
    return out


def write_label_studio(
    ws: Workspace,
    df: pd.DataFrame,
    stage: Path,
    *,
    field: str,
    fields: Sequence[str],
    out_name: str,
) -> list[str]:
    """``label_studio_tasks.json`` (one task per face: human labels as annotations,
    suggestions as predictions) and ``label_studio_config.xml`` (see the module doc)."""
    from labeler.labels import LabelStore

    sug = LabelStore(ws.labels_db).suggestions()
    sug = sug[sug["face_id"].isin(set(df["face_id"])) & sug["field"].isin(list(fields))]
    by_face = {k: g for k, g in sug.sort_values(["method", "field"]).groupby("face_id", sort=False)}
    tasks = []
    for row in df.to_dict("records"):
        face_id = str(row["face_id"])
        machine = str(row["label_source"]).startswith("suggested:")
        data = {
            "image": "/data/local-files/?d=" + quote(f"{out_name}/{row['file']}", safe="/"),
            "face_id": face_id,
            "path": str(row["path"]),
            "split": str(row["split"]),
            "person": str(row["person"]),
        }
        task: dict[str, Any] = {"data": data}
        human = [
            (f, str(row[f])) for f in fields if str(row[f] or "") and not (f == field and machine)
        ]
        if human:
            task["annotations"] = [
                {
                    "result": [_choice(f, v, f"a{i}") for i, (f, v) in enumerate(human)],
                    "ground_truth": False,
                }
            ]
        preds = []
        if face_id in by_face:
            for j, (method, g) in enumerate(by_face[face_id].groupby("method", sort=True)):
                result = [
                    _choice(str(s.field), str(s.value), f"p{j}r{i}", s.confidence)
                    for i, s in enumerate(g.itertuples())
                ]
                preds.append(
                    {
                        "model_version": str(method),
                        "score": round(float(g["confidence"].min()), 6),
                        "result": result,
                    }
                )
        if preds:
            task["predictions"] = preds
        tasks.append(task)
    _dump(stage / LS_TASKS, tasks)
    _write_bytes(stage / LS_CONFIG, label_studio_config(ws, fields).encode())
    return [LS_TASKS, LS_CONFIG]


# --- FiftyOne ------------------------------------------------------------------------------


def write_fiftyone(ws: Workspace, df: pd.DataFrame, stage: Path, *, field: str) -> list[str]:
    """``{split}/labels.json`` of FiftyOne's ``FiftyOneImageClassificationDataset`` (the
    images are ``{split}/data/{face_id}.jpg``): ``classes`` and ``labels`` keyed by the file's
    name without extension (see the module doc)."""
    from labeler.labels import LabelStore

    store = LabelStore(ws.labels_db)
    schema = store.schema()
    classes = list(schema.values(field)) if field in schema.names else []
    classes += sorted(set(df[field].astype(str)) - set(classes))
    sug = store.suggestions(field)
    best = (
        sug.sort_values(["confidence", "method"], ascending=[False, True])
        .drop_duplicates("face_id")
        .set_index("face_id")
    )
    files = []
    for split in _splits(df):
        labels: dict[str, Any] = {}
        for row in df[df["split"] == split].to_dict("records"):
            uuid = (
                PurePosixPath(row["file"]).relative_to(f"{split}/data").with_suffix("").as_posix()
            )
            value = str(row[field])
            source = str(row["label_source"])
            if source.startswith("suggested:") and row["face_id"] in best.index:
                conf = round(float(best.at[row["face_id"], "confidence"]), 6)
                labels[uuid] = {"label": value, "confidence": conf}
            else:
                labels[uuid] = value
        rel = f"{split}/labels.json"
        _dump(stage / rel, {"classes": classes, "labels": labels})
        files.append(rel)
    return files
