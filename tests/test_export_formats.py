"""labeler export --format hf|coco|label-studio|fiftyone: each layout checked against its
format's published description (the required keys and types the format's docs name), and
loaded by its own library when that is installed here (``datasets``, ``pycocotools``,
``label_studio_sdk``, ``fiftyone`` are optional: without them the schema checks stand alone,
nothing is skipped).

The schema checks, and where they come from:

* Hugging Face ``imagefolder`` with metadata (huggingface.co/docs/datasets/image_dataset, and
  ``datasets/packaged_modules/folder_based_builder``): one metadata file per split folder,
  all of one extension (the builder refuses ``.csv`` beside ``.jsonl``), a ``file_name``
  string per row naming an image relative to the metadata file's folder, the same features
  in every split (read with ``pyarrow.json`` as the builder reads them), no other column
  read as an image (``image``, ``*_file_name``); split folders named train / val / test.
* COCO (cocodataset.org/#format-data, "Object Detection" and "Keypoint Detection"):
  ``images`` (id, file_name, width, height), ``annotations`` (id, image_id, category_id,
  segmentation, area, bbox ``[x, y, width, height]``, iscrowd, keypoints ``[x, y, v] * K``
  with v in 0/1/2 and ``x = y = 0`` where ``v = 0``, num_keypoints = labeled points),
  ``categories`` (id, name, supercategory, keypoints, skeleton of 1-based pairs).
* Label Studio (labelstud.io/guide/tasks, /guide/predictions, /tags/choices): tasks are a list
  of objects with ``data`` holding the ``$image`` variable; ``annotations`` and
  ``predictions`` hold ``result`` lists whose items have an id unique in the task,
  ``from_name`` a Choices tag, ``to_name`` its Image tag, ``type`` "choices" and
  ``value.choices`` among that tag's Choice values; prediction ``score`` in [0, 1].
* FiftyOne ``FiftyOneImageClassificationDataset`` (docs.voxel51.com, "Exporting/Loading
  datasets"): ``data/`` and ``labels.json`` with ``classes`` (list of str) and ``labels``
  (``{uuid: target}``, the uuid an image's path below ``data/`` without its extension; a
  target a label string, a class index, null, or ``{"label", "confidence"}``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner

from labeler.cli import cli
from labeler.labels import MASK_STATES, NOT_A_FACE, LabelStore

PERSONS = ("--person-pattern", r"^(person_\d+)/")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def optional(name: str):
    """The module when it is installed here, else None (the schema checks stand alone)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def tiny(tmp_path):
    """72 labeled faces in 24 persons, 4 of them unlabeled with a suggestion, some with a
    second field; one photo holds a second (unlabeled) face for COCO's shared image."""
    t = tinyws.build(tmp_path, {"correct": 30, "no_mask": 30, "on_chin": 12}, faces_per_person=3)
    tinyws.label_all(t)
    store = LabelStore(t.ws.labels_db)
    ids = t.truth.index
    store.assign(ids[:4], "mask_state", None, annotator="test", source="single")
    store.write_suggestions(
        pd.DataFrame(
            {
                "face_id": [*ids[:4], ids[10]],
                "field": ["mask_state"] * 4 + ["gender"],
                "value": ["correct"] * 4 + ["male"],
                "confidence": [0.91, 0.82, 0.73, 0.64, 0.55],
            }
        ),
        "propagate:both",
    )
    store.assign(ids[10:16], "gender", "female", annotator="ann", source="selection")
    return t


def export(ws, out: Path, fmt: str, *extra: str):
    res = run("export", "-w", str(ws.root), "--out", str(out), "--format", fmt, *PERSONS, *extra)
    assert res.exit_code == 0, res.output
    return pd.read_csv(out / "manifest.csv", keep_default_na=False, dtype={"person": str})


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- Hugging Face --------------------------------------------------------------------------

HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def check_hf_imagefolder(out: Path) -> dict[str, list[dict]]:
    """The imagefolder-with-metadata rules (module doc); returns the rows per split."""
    import pyarrow.json as paj

    rows, schemas = {}, {}
    for split in HF_SPLITS:
        folder = out / split
        if not folder.is_dir():
            continue
        metas = sorted(p.name for p in folder.rglob("metadata.*"))
        assert metas == ["metadata.jsonl"], f"{split}: one metadata file of one format: {metas}"
        table = paj.read_json(folder / "metadata.jsonl")  # as the builder reads it
        schemas[split] = table.schema
        rows[split] = table.to_pylist()
        listed = set()
        for row in rows[split]:
            assert isinstance(row["file_name"], str)
            assert not row.keys() & {"image", "file_names"}
            assert not any(k.endswith(("_file_name", "_file_names")) for k in row)
            assert all(v is not None for v in row.values()), row  # null: another feature type
            path = folder / row["file_name"]
            assert path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
            listed.add(PurePosixPath(row["file_name"]).as_posix())
        images = {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
        }
        assert images == listed  # an image the metadata misses is dropped by the loader
    assert rows, "no split folder"
    first = next(iter(schemas.values()))
    for split, schema in schemas.items():
        assert schema.equals(first), f"{split}: features differ from the other splits'"
    return rows


def test_hf_layout_is_an_imagefolder_dataset_with_every_column(tiny, tmp_path):
    out = tmp_path / "hf"
    man = export(tiny.ws, out, "hf")
    rows = check_hf_imagefolder(out)
    got = pd.DataFrame([r for split in rows.values() for r in split])
    assert len(got) == len(man) == 72
    got = got.set_index("face_id").loc[man["face_id"]]
    for col in ("split", "person", "path", "mask_state", "gender", "age_band", "label_source"):
        assert got[col].tolist() == man[col].astype(str).tolist(), col
    assert (got["file_name"].radd(got["split"] + "/") == man["file"].to_numpy()).all()
    datasets = optional("datasets")
    if datasets is not None:  # the loader itself, where it is installed
        ds = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "c"))
        assert {HF_SPLITS[s] for s in rows} == set(ds)
        assert sum(len(ds[s]) for s in ds) == 72
        assert {"image", "mask_state", "gender", "split", "person"} <= set(ds["train"].features)


# --- COCO ----------------------------------------------------------------------------------


def check_coco(doc: dict, image_dir: Path) -> None:
    """COCO's object detection + keypoint format (module doc)."""
    assert {"images", "annotations", "categories"} <= doc.keys()
    assert isinstance(doc.get("info", {}), dict) and isinstance(doc.get("licenses", []), list)
    cats = {}
    for c in doc["categories"]:
        assert isinstance(c["id"], int) and isinstance(c["name"], str)
        assert isinstance(c["supercategory"], str)
        assert all(isinstance(k, str) for k in c["keypoints"])
        k = len(c["keypoints"])
        assert all(len(e) == 2 and all(1 <= i <= k for i in e) for e in c["skeleton"])
        cats[c["id"]] = k
    images = {}
    for im in doc["images"]:
        assert isinstance(im["id"], int) and im["id"] not in images
        assert isinstance(im["file_name"], str) and (image_dir / im["file_name"]).is_file()
        assert isinstance(im["width"], int) and isinstance(im["height"], int)
        assert im["width"] > 0 and im["height"] > 0
        images[im["id"]] = im
    ann_ids = set()
    for a in doc["annotations"]:
        assert isinstance(a["id"], int) and a["id"] not in ann_ids
        ann_ids.add(a["id"])
        assert a["image_id"] in images and a["category_id"] in cats
        assert a["iscrowd"] in (0, 1)
        assert isinstance(a["segmentation"], (list, dict))
        x, y, w, h = a["bbox"]
        assert all(isinstance(v, (int, float)) for v in (x, y, w, h)) and w > 0 and h > 0
        im = images[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= im["width"] + 1 and y + h <= im["height"] + 1
        assert isinstance(a["area"], (int, float)) and a["area"] > 0
        kps = a["keypoints"]
        assert len(kps) == 3 * cats[a["category_id"]]
        vs = kps[2::3]
        assert all(v in (0, 1, 2) for v in vs)
        assert a["num_keypoints"] == sum(v > 0 for v in vs)
        for px, py, v in zip(kps[0::3], kps[1::3], vs, strict=True):
            assert (px, py) == (0, 0) if v == 0 else (x - 1 <= px <= x + w + 1)


def test_coco_layout_photos_boxes_landmarks_and_fields(tiny, tmp_path):
    ws = tiny.ws
    out = tmp_path / "coco"
    man = export(ws, out, "coco")
    faces = ws.faces().set_index("face_id")
    n = 0
    for split in ("train", "val", "test"):
        path = out / "annotations" / f"instances_{split}.json"
        doc = json.loads(path.read_text())
        check_coco(doc, out / split)
        part = man[man["split"] == split].set_index("face_id")
        files = {im["id"]: im["file_name"] for im in doc["images"]}
        for a in doc["annotations"]:
            row = part.loc[a["face_id"]]
            assert a["attributes"] == {
                f: (row[f] or None) for f in ("mask_state", "gender", "age_band")
            }
            assert a["bbox"][:2] == [row["x0"], row["y0"]]
            lm = faces.at[a["face_id"], "landmarks"]
            assert a["keypoints"][:2] == [round(float(lm[0]), 2), round(float(lm[1]), 2)]
            # the photo itself, copied: its bytes are the ingested photo's
            photo = (out / split / files[a["image_id"]]).read_bytes()
            assert photo == (tiny.source / row["path"]).read_bytes()
        n += len(doc["annotations"])
        pycocotools = optional("pycocotools.coco")
        if pycocotools is not None:
            coco = pycocotools.COCO(str(path))
            assert len(coco.getAnnIds()) == len(doc["annotations"])
            assert coco.loadCats(1)[0]["keypoints"] == ["left_eye", "right_eye", "nose", "mouth"]
    assert n == 72


# --- Label Studio --------------------------------------------------------------------------


def check_label_studio(tasks: list, config: str) -> dict[str, set[str]]:
    """Label Studio's task format against its labeling config (module doc); returns the
    Choices tags and their values."""
    view = ET.fromstring(config)
    assert view.tag == "View"
    objects = {e.get("name"): e.get("value") for e in view.iter("Image")}
    assert objects and all(v.startswith("$") for v in objects.values())
    choices = {}
    for c in view.iter("Choices"):
        assert c.get("toName") in objects and c.get("choice") in ("single", "multiple", None)
        choices[c.get("name")] = {x.get("value") for x in c.iter("Choice")}
    assert isinstance(tasks, list)
    for task in tasks:
        assert isinstance(task["data"], dict)
        for var in objects.values():
            assert isinstance(task["data"].get(var[1:]), str)
        ids = []
        for key in ("annotations", "predictions"):
            for item in task.get(key, []):
                assert isinstance(item["result"], list) and item["result"]
                if key == "predictions":
                    assert isinstance(item["model_version"], str)
                    assert 0.0 <= item["score"] <= 1.0
                for r in item["result"]:
                    ids.append(r["id"])
                    assert r["type"] == "choices" and r["to_name"] in objects
                    assert r["from_name"] in choices
                    assert set(r["value"]["choices"]) <= choices[r["from_name"]]
                    assert 0.0 <= r.get("score", 0.0) <= 1.0
        assert len(ids) == len(set(ids)), "result ids must differ within a task"
    return choices


def test_label_studio_tasks_carry_labels_and_suggestions_as_predictions(tiny, tmp_path):
    out = tmp_path / "ls"
    man = export(tiny.ws, out, "label-studio")
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    config = (out / "label_studio_config.xml").read_text()
    choices = check_label_studio(tasks, config)
    assert NOT_A_FACE in choices["mask_state"] and "female" in choices["gender"]
    assert len(tasks) == len(man) == 72
    by_face = {t["data"]["face_id"]: t for t in tasks}
    ids = tiny.truth.index
    for face_id in ids[:4]:  # unlabeled: the suggestion is a prediction, never an annotation
        t = by_face[face_id]
        assert "annotations" not in t
        (pred,) = t["predictions"]
        assert pred["model_version"] == "propagate:both"
        assert pred["result"][0]["value"]["choices"] == ["correct"]
        assert pred["score"] == pred["result"][0]["score"]
    assert {round(by_face[f]["predictions"][0]["score"], 2) for f in ids[:4]} == {
        0.91,
        0.82,
        0.73,
        0.64,
    }
    t = by_face[ids[10]]  # human labels in two fields, and a suggestion for one of them
    given = {r["from_name"]: r["value"]["choices"][0] for r in t["annotations"][0]["result"]}
    assert given == {"mask_state": tiny.truth[ids[10]], "gender": "female"}
    assert t["predictions"][0]["result"][0]["score"] == 0.55
    row = man.set_index("face_id").loc[ids[10]]
    assert t["data"]["image"] == f"/data/local-files/?d=ls/{row['file']}"
    assert (out / row["file"]).is_file()
    sdk = optional("label_studio_sdk.label_interface")
    if sdk is not None:  # Label Studio's own validator, where the SDK is installed
        li = sdk.LabelInterface(config)
        li.validate()
        for task in tasks:
            for item in task.get("predictions", []) + task.get("annotations", []):
                assert li.validate_prediction(item, return_errors=True) == []


# --- FiftyOne ------------------------------------------------------------------------------


def check_fiftyone_classification(dataset_dir: Path) -> dict:
    """FiftyOneImageClassificationDataset (module doc); returns labels.json."""
    doc = json.loads((dataset_dir / "labels.json").read_text())
    classes = doc.get("classes")
    assert classes is None or all(isinstance(c, str) for c in classes)
    images = {
        p.relative_to(dataset_dir / "data").with_suffix("").as_posix()
        for p in (dataset_dir / "data").rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
    }
    assert set(doc["labels"]) == images
    for target in doc["labels"].values():
        if isinstance(target, dict):
            assert isinstance(target["label"], (str, int))
            assert 0.0 <= target.get("confidence", 0.0) <= 1.0
        else:
            assert target is None or isinstance(target, (str, int))
    return doc


def test_fiftyone_layout_per_split(tiny, tmp_path):
    out = tmp_path / "fo"
    man = export(tiny.ws, out, "fiftyone")
    labels = {}
    for split in ("train", "val", "test"):
        doc = check_fiftyone_classification(out / split)
        assert doc["classes"] == list(MASK_STATES)
        labels.update(doc["labels"])
    assert set(labels) == set(man["face_id"])
    for row in man.itertuples():
        target = labels[row.face_id]
        if row.label_source.startswith("suggested:"):
            assert target["label"] == row.mask_state and target["confidence"] > 0.6
        else:
            assert target == row.mask_state
    fo = optional("fiftyone")
    if fo is not None:
        ds = fo.Dataset.from_dir(
            dataset_dir=str(out / "train"),
            dataset_type=fo.types.FiftyOneImageClassificationDataset,
        )
        assert len(ds) == (man["split"] == "train").sum()


# --- every format: atomic, reproducible, the user's files kept ------------------------------


@pytest.mark.parametrize("fmt", ["hf", "coco", "label-studio", "fiftyone"])
def test_every_format_reexports_byte_identical_and_force_knows_its_files(tiny, tmp_path, fmt):
    ws = tiny.ws
    a, b = tmp_path / "one" / "out", tmp_path / "two" / "out"  # one name: Label Studio's URLs
    export(ws, a, fmt, "--seed", "3")
    export(ws, b, fmt, "--seed", "3")
    digest = tree_digest(a)
    assert digest == tree_digest(b)
    meta = json.loads((a / "export.json").read_text())
    assert meta["files"] and all((a / f).is_file() for f in meta["files"])
    (a / "notes.txt").write_text("mine")
    export(ws, a, fmt, "--seed", "3", "--force")  # replaces the export, keeps notes.txt
    assert (a / "notes.txt").read_text() == "mine"
    assert {k: v for k, v in tree_digest(a).items() if k != "notes.txt"} == digest
    # a file of the user's where a format writes: not an export any more, nothing deleted
    where = a / ("annotations" if fmt == "coco" else "train") / "mine.json"
    where.parent.mkdir(exist_ok=True)
    where.write_text("{}")
    res = run("export", "-w", str(ws.root), "--out", str(a), "--format", fmt, *PERSONS, "--force")
    assert res.exit_code != 0 and "not a labeler export" in res.output and where.is_file()


def test_label_studio_file_beside_an_imagefolder_export_is_the_users(tiny, tmp_path):
    """A file named like a format's file that the export does not list is the user's:
    --force refuses (it would be replaced), nothing is deleted."""
    out = tmp_path / "o"
    export(tiny.ws, out, "imagefolder")
    (out / "label_studio_tasks.json").write_text("[]")
    res = run("export", "-w", str(tiny.ws.root), "--out", str(out), *PERSONS, "--force")
    assert res.exit_code != 0 and "label_studio_tasks.json" in res.output
    assert (out / "label_studio_tasks.json").read_text() == "[]"


def test_clusters_and_table_formats_refuse_the_folder_formats(tiny, tmp_path):
    res = run(
        "export", "-w", str(tiny.ws.root), "--what", "clusters", "--format", "coco",
        "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert res.exit_code != 0 and "csv or parquet" in res.output
