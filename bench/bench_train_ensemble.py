"""The final classifier on every shared set: ``labeler train --mode head`` vs ``--mode ensemble``.

For each set it copies a workspace built by ``labeler run`` with the shipped defaults (int8
features), labels every image's largest face with its true state (``LabelStore.assign``,
source ``import``; ``masked`` is ``correct``, realmasks' ``incorrect`` is ``nose_exposed``) and runs the command a user runs, each in its own process, timed (wall
and the child's CPU seconds):

- ``labeler train --mode head`` (the default): the logistic head on the ``auto`` blocks,
  scored on its out-of-fold predictions (5-fold);
- ``labeler train --mode ensemble``: the same head (5-fold) and 3 EfficientNet-Lite0 CNNs
  fine-tuned on the aligned crops at 128 px (3-fold, the last epoch kept), their
  probabilities averaged; the run records each part's out-of-fold scores (head, CNN alone,
  ensemble).

Folds are grouped by person: ``realmasks`` by its ``scene`` (faces of one web photo),
``mfr2`` by its ``person``, the others by source image (``--persons image``), through
``--person-csv`` as a user would give them. Writes ``bench/results/train_ensemble.{json,md}``.

    nice python bench/bench_train_ensemble.py --ws-root /tmp/bench_ray_equal_XXXX --suffix _local
    nice python bench/bench_train_ensemble.py --sets mfr2 --ws-root ... --suffix _local
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SETS = ("realmasks", "mfr2", "maskedfacenet", "webfaces")
GROUP_COLUMN = {"realmasks": "scene", "mfr2": "person"}
# truth states as the label field's values (realmasks' "incorrect" is under the nose or on
# the chin: the app's nose_exposed)
VALUE = {"masked": "correct", "incorrect": "nose_exposed"}
MODES = ("head", "ensemble")
log = logging.getLogger("bench_train_ensemble")


def prepare(name: str, src: Path, scratch: Path) -> tuple[Path, Path | None, int]:
    """A copy of ``src`` with every image's largest face labeled from the truth; the person
    CSV (face_id, person) of sets that have a grouping column; the number of labels."""
    from labeler.labels import LabelStore
    from labeler.loop.truth import join_truth
    from labeler.workspace import Workspace

    dst = scratch / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "labels.db*", "suggest"))
    ws = Workspace.open(dst)
    truth_csv = SHARED / name / "labels.csv"
    t = join_truth(ws, str(truth_csv))
    store = LabelStore(ws.labels_db)
    for value, ids in t.groupby("truth")["face_id"]:
        value = VALUE.get(str(value), str(value))
        store.assign(ids.tolist(), "mask_state", value, annotator="bench", source="import")
    person_csv = None
    col = GROUP_COLUMN.get(name)
    if col:
        table = pd.read_csv(truth_csv)
        images = ws.images().set_index("image_id")["path"].map(lambda p: Path(p).name)
        faces = ws.faces().set_index("face_id").loc[t["face_id"]]
        files = images.loc[faces["image_id"]].to_numpy()
        group = dict(zip(table["file"], table[col], strict=True))
        person_csv = scratch / f"{name}_persons.csv"
        pd.DataFrame({"face_id": t["face_id"], "person": [group[f] for f in files]}).to_csv(
            person_csv, index=False
        )
    return dst, person_csv, len(t)


def train(ws: Path, mode: str, person_csv: Path | None) -> dict:
    """``labeler train`` in its own process; its run's config with wall and CPU seconds."""
    cmd = [str(Path(sys.executable).with_name("labeler")), "train", "-w", str(ws), "--mode", mode]
    cmd += ["--model", mode, "--no-label-errors", "-q"]
    cmd += ["--person-csv", str(person_csv)] if person_csv else ["--persons", "image"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cfg = json.loads((ws / "models" / mode / "config.json").read_text())
    return cfg | {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def rows_of(name: str, n: int, mode: str, cfg: dict) -> list[dict]:
    rep = cfg["report"]
    row = {
        "set": name,
        "labels": n,
        "classifier": "head (--mode head)"
        if mode == "head"
        else "ensemble (default from 300 labels)",
        "accuracy": rep["accuracy"],
        "macro-F1": rep["macro_f1"],
        "per-class F1": ", ".join(f"{c} {v['f1']:.3f}" for c, v in rep["per_class"].items()),
        "wall s": cfg["wall_s"],
        "CPU s": cfg["cpu_s"],
    }
    out = [row]
    if mode == "ensemble":  # the CNN half alone, from the same run
        cnn = cfg["scores"]["cnn"]
        out.insert(
            0,
            {
                "set": name,
                "labels": n,
                "classifier": "CNNs alone (3-fold, 128 px)",
                "accuracy": cnn["accuracy"],
                "macro-F1": cnn["macro_f1"],
                "per-class F1": "",
                "wall s": "(in the ensemble's)",
                "CPU s": "",
            },
        )
    return out


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) and c in ("accuracy", "macro-F1") else str(r[c]) for c in cols]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def open_results(scratch: str, out: str) -> tuple[Path, Path, dict]:
    """A bench's scratch folder (made), its output stem, and what ``out``.json holds already
    (sets run before, or {}): a run adds or replaces sets. Logs at INFO."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    Path(scratch).mkdir(parents=True, exist_ok=True)
    path = Path(out).with_suffix(".json")
    return Path(scratch), Path(out), json.loads(path.read_text()) if path.exists() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--ws-root", required=True, help="folder of workspaces made by labeler run")
    ap.add_argument("--suffix", default="", help="workspace folder = <set><suffix>")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--scratch", default="/tmp/bench_train_ensemble")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_ensemble"))
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    scratch, out, done = open_results(args.scratch, args.out)
    for name in [] if args.table_only else args.sets.split(","):
        ws, person_csv, n = prepare(name, Path(args.ws_root) / f"{name}{args.suffix}", scratch)
        done[name] = {"labels": n, "runs": {}}
        for mode in MODES:
            cfg = train(ws, mode, person_csv)
            log.info("%s %s: %s (%.0f s)", name, mode, cfg["report"]["macro_f1"], cfg["wall_s"])
            keep = ("report", "scores", "wall_s", "cpu_s", "evaluated_on", "persons")
            done[name]["runs"][mode] = {k: cfg[k] for k in keep if k in cfg}
        out.with_suffix(".json").write_text(json.dumps(done, indent=1))
    rows = []
    for name, d in done.items():
        for mode in MODES:
            if mode in d["runs"]:
                rows += rows_of(name, d["labels"], mode, d["runs"][mode])
    text = markdown(rows)
    out.with_suffix(".md").write_text(HEADER + text + "\n")
    print(text)


HEADER = """# labeler train: head vs ensemble, out of fold (bench/bench_train_ensemble.py)

Every image's largest face labeled with its true state; `labeler train` as shipped, each
run in its own process on the 2-core development machine (wall and CPU seconds of the
process). Folds grouped by person: realmasks by scene (its `scene` column), mfr2 by
person, the others by source image.

- head: the logistic head on the default features (`auto`: cues, nose band, mouth and chin,
  box crop; int8 EfficientNet-Lite0), scored out of fold (5-fold).
- CNNs alone: 3 EfficientNet-Lite0 CNNs fine-tuned on the aligned crops at 128 px (stem and
  first 2 stages frozen; 6 epochs; AdamW, lr 0.0005, classifier 0.002, warm-up and cosine;
  random crops of 70-100 % of the area, flips, rotation up to 10 degrees, colour jitter,
  grayscale; centre 93 % when predicting), one per fold of a 3-fold; the last epoch kept,
  so no epoch is chosen on the faces scored.
- ensemble: their probabilities averaged, half and half (`labeler train --mode ensemble`;
  `--mode auto`, the default, trains it from 300 labels, up to 2,500 without a GPU).

Timings: realmasks ran alone on the machine; maskedfacenet's ensemble shared it with test
runs for part of its time.

"""


if __name__ == "__main__":
    main()
