"""README figures from the bench outputs, so the two cannot drift (issue 23).

Every generated figure in README.md sits between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->`` (on their own lines around a table, inline around a phrase) and is
written here from a file under ``bench/results/`` or a bench ``.md`` result; a hand-copied
number is what drifted before. ``tests/test_readme_figures.py`` checks that README.md is what
this script writes.

    python bench/readme_figures.py          # rewrite README.md's generated figures
    python bench/readme_figures.py --check  # exit 1 (and say which block) if README.md differs

Sources: ``results/grouping.json`` (``bench/bench_grouping.py``: the effort table and its
seed ranges), ``results/fastdup_kmeans.json`` (``bench/bench_fastdup.py``), ``LOOP.md``
(``bench/bench_loop.py``: synthetic sessions), ``results/cpu_shipped.json``
(``bench/bench_pipeline.py --shipped --repeat 3``), ``results/memory.json``
(``bench/bench_memory.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"

# set name in the bench outputs -> how the README names it
EFFORT_SETS = {
    "realmasks": "real crowd crops (`realmasks`: correct / incorrect / no mask)",
    "maskedfacenet": "MaskedFace-Net (4 states, pasted masks)",
    "webfaces": "web photos (masked / no mask)",
    "mfr2": "MFR2 (real, masked / no mask)",
    "demo": "demo set (`make demo`, 5 states, one face, heavy augmentation)",
}
DEFAULT, BEFORE = "ward (new default)", "hdbscan (default before)"
# the headline figures, bold in the table
BOLD = {("realmasks", "plain95"), ("maskedfacenet", "plain98"), ("maskedfacenet", "inter98")}
BOLD |= {("webfaces", "plain98")}
SHIPPED = {
    "labeler run --no-cluster (default)": (
        "`labeler run --no-cluster` (default: nose + mouth-chin + box crop + cues)"
    ),
    "labeler run (default, with clustering)": "`labeler run` (default, with clustering)",
    "labeler run --no-cluster --features face (one region)": (
        "`labeler run --no-cluster --features face` (one region)"
    ),
    "naive (bench/naive_pipeline.py)": (
        "naive: the same work as the default in the obvious way (`bench/naive_pipeline.py`: "
        "cv2.imread, BlazeFace, warpAffine, three 224 px crops, torch eager, batches of 32)"
    ),
}


def _json(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def _f1(x: float) -> str:
    return f"{x:.1f}"


def _grouping(results: Path) -> dict[tuple[str, str], list[dict]]:
    """grouping.json's rows by (set, candidate), seeds in order."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(_json(results, "grouping.json")["rows"], key=lambda r: r["seed"]):
        rows.setdefault((r["set"], r["candidate"]), []).append(r)
    return rows


def effort_table(results: Path) -> str:
    """The default grouping (cluster seed 0) against the default before, per shared set."""
    rows = _grouping(results)
    out = [
        "| data | groups (sizes) | plain eff95 / 98 (before) | interactive eff95 / 98 (before) |",
        "|---|---|---|---|",
    ]
    for name, label in EFFORT_SETS.items():
        new, old = rows[(name, DEFAULT)][0], rows[(name, BEFORE)][0]
        assert new["seed"] == old["seed"] == 0, (name, new["seed"], old["seed"])
        groups = f"{new['groups']} ({new['size_min']}-{new['size_max']})"
        if new["noise"] or old["noise"]:
            groups += (
                f", {new['noise']} noise faces (before: {old['groups']} groups"
                f" + {old['noise']} noise faces)"
            )

        def pair(k95: str, k98: str, new: dict = new, old: dict = old, name: str = name) -> str:
            now = [f"**{_f1(new[k])}**" if (name, k) in BOLD else _f1(new[k]) for k in (k95, k98)]
            return f"{now[0]} / {now[1]} ({_f1(old[k95])} / {_f1(old[k98])})"

        plain, inter = pair("plain95", "plain98"), pair("inter95", "inter98")
        out.append(f"| {label} | {groups} | {plain} | {inter} |")
    return "\n".join(out)


def _seed_range(rows: list[dict], key: str) -> str:
    lo, hi = min(r[key] for r in rows), max(r[key] for r in rows)
    return f"{_f1(lo)}-{_f1(hi)}"


def effort_seeds(results: Path) -> str:
    """Min-max over the cluster seeds of the default grouping."""
    rows = _grouping(results)
    rm, mfn, web = (rows[(s, DEFAULT)] for s in ("realmasks", "maskedfacenet", "webfaces"))
    assert len(rm) == len(mfn) == len(web), "every set is run with the same seeds"
    return (
        f"over {len(rm)} cluster seeds, plain: realmasks eff95 {_seed_range(rm, 'plain95')}, "
        f"MaskedFace-Net eff98 {_seed_range(mfn, 'plain98')}, web photos eff98 "
        f"{_seed_range(web, 'plain98')}; interactive: realmasks eff95 "
        f"{_seed_range(rm, 'inter95')}, MaskedFace-Net eff98 {_seed_range(mfn, 'inter98')}"
    )


def fastdup_peer(results: Path, k: str = "8") -> str:
    """fastdup's features + k-means (k = 8): medians over seeds."""
    sets = {s["set"]: s for s in _json(results, "fastdup_kmeans.json")["sets"]}

    def med(name: str, key: str) -> str:
        (row,) = [r for r in sets[name]["rows"] if r["k_label"] == k]
        return _f1(statistics.median(run[key] for run in row["runs"]))

    return (
        f"plain eff98 {med('maskedfacenet', 'plain_eff98')} on MaskedFace-Net, "
        f"{med('webfaces', 'plain_eff98')} on the web photos, {med('mfr2', 'plain_eff98')} on "
        f"MFR2 and plain eff95 {med('realmasks', 'plain_eff95')} on realmasks"
    )


def loop_sessions(results: Path) -> str:
    """How many synthetic sessions the interactive loop needed more actions than plain in."""
    text = (results.parent / "LOOP.md").read_text()
    m = re.search(r"(\d+) sessions\): interactive < plain at some\s+level in (\d+)", text)
    assert m, "bench/LOOP.md no longer states the synthetic sessions' count"
    total, worse = int(m.group(1)), int(m.group(2))
    return f"{worse} of {total}"


def throughput_table(results: Path) -> str:
    rows = {r["command"]: r for r in _json(results, "cpu_shipped.json") if "faces" in r}
    out = ["| command | faces/s (min-max) | CPU ms/face | vs naive |", "|---|---|---|---|"]
    for command, label in SHIPPED.items():
        r = rows[command]
        speed = f"{_f1(r['faces_s_median'])} ({_f1(r['faces_s_min'])}-{_f1(r['faces_s_max'])})"
        ratio = f"{r['vs_naive']:.2f}x"
        if command.endswith("(default)"):
            speed, ratio = f"**{_f1(r['faces_s_median'])}**{speed[4:]}", f"**{ratio}**"
        out.append(f"| {label} | {speed} | {_f1(r['cpu_ms_per_face'])} | {ratio} |")
    return "\n".join(out)


def throughput_steps(results: Path) -> str:
    data = _json(results, "cpu_shipped.json")
    (steps,) = [r for r in data if r["command"].startswith("steps of the default run")]
    peaks = {r["peak_rss_gb"] for r in data if "peak_rss_gb" in r}
    return (
        f"ingest {_f1(steps['ingest'])}, detect + embed {_f1(steps['detect+embed'])} "
        f"(overlapped), cues {_f1(steps['cues'])}; the largest process of the whole bench, "
        f"any of the four commands, peaked at {max(peaks):.2f} GB"
        " (`bench_pipeline.py` reads the children's maximum RSS, which is not per command)"
    )


def default_speed(results: Path, photos: int = 133_000) -> str:
    """What the default speed means for the app bench's 133,000 faces."""
    (r,) = [r for r in _json(results, "cpu_shipped.json") if r["command"].endswith("(default)")]
    minutes = photos / r["faces_s_median"] / 60
    return (
        f"At {_f1(r['faces_s_median'])} faces/s, {photos:,} one-face photos take about "
        f"{minutes:.0f} minutes"
    )


def _embed_txt(results: Path, path_name: str) -> float:
    """crops/s of one row of ``gpu_h100_embed.txt`` (bench/bench_embed.py's table)."""
    for line in (results / "gpu_h100_embed.txt").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == path_name:
            return float(cells[2])
    raise ValueError(f"gpu_h100_embed.txt has no row {path_name!r}")


def stage_table(results: Path) -> str:
    """``bench/bench_pipeline.py`` stage by stage: 2 cores (600 photos) and the H100 box."""
    cpu = _json(results, "cpu_pipeline.json")
    gpu = _json(results, "gpu_h100_fused_pipeline.json")
    bf16 = _embed_txt(results, "labeler CUDA bf16 + channels_last")
    cpu_x = cpu["e2e_labeler_faces_s"] / cpu["e2e_naive_faces_s"]
    gpu_x = gpu["e2e_labeler_faces_s"] / gpu["e2e_naive_faces_s"]
    rows = [
        "| stage | naive, 2 cores | labeler, 2 cores | naive, H100 box "
        f"({gpu['cores']} cores) | labeler, H100 box |",
        "|---|---|---|---|---|",
        f"| decode a 1024 JPEG, ms | {_f1(cpu['decode_full_ms'])} (cv2 full) | "
        f"{_f1(cpu['decode_draft_ms'])} (DCT-scaled) | {_f1(gpu['decode_full_ms'])} | "
        f"{_f1(gpu['decode_draft_ms'])} (CPU path) |",
        f"| detect (MediaPipe BlazeFace), ms/image | | {_f1(cpu['detect_ms'])} in the bench's "
        f"loop | | {_f1(gpu['detect_ms'])} (CPU path) |",
        f"| embed, crops/s | {cpu['embed_eager_crops_s']:.0f} (torch eager) | "
        f"{cpu['embed_labeler_crops_s']:.0f} (ONNX Runtime) | | {bf16:,.0f} (bf16, see below) |",
        f"| **end to end, faces/s** | {_f1(cpu['e2e_naive_faces_s'])} | "
        f"**{_f1(cpu['e2e_labeler_faces_s'])} ({cpu_x:.1f}x)** | {_f1(gpu['e2e_naive_faces_s'])} | "
        f"**{_f1(gpu['e2e_labeler_faces_s'])} fused GPU pass ({gpu_x:.1f}x)**; "
        f"{_f1(gpu['e2e_labeler_threads_faces_s'])} CPU-thread path |",
    ]
    return "\n".join(rows)


def stage_runs(results: Path) -> str:
    cpu = _json(results, "cpu_pipeline.json")
    gpu = _json(results, "gpu_h100_fused_pipeline.json")
    return (
        f"The 2-core columns are one `--repeat 3` run ({cpu['images']} photos, "
        f"{cpu['e2e_faces']} faces, `bench/results/cpu_pipeline.json`). The H100 columns are "
        f"`bench/run_on_gpu.sh` with `REPEAT=150` (28 photos of the set copied 150 times with "
        f"distinct bytes: {gpu['images']:,} photos, {gpu['e2e_faces']:,} faces"
    )


def memory_peaks(results: Path) -> str:
    now, before = _json(results, "memory.json"), _json(results, "memory_before_fix.json")
    rows = {r["folder"]: r for r in now["rows"]}
    old = {r["folder"]: r for r in before["rows"]}
    assert now["junk_mb"] == before["junk_mb"] and now["limit_mb"] == before["limit_mb"]
    junk = ", ".join(f"{mb:,} MB" for mb in now["junk_mb"])
    return (
        f"peaks at {rows['photos']['peak_rss_mb']:,.0f} MB; with junk files of {junk} added "
        f"(`LABELER_MAX_FILE_MB={now['limit_mb']}`, so they are read, hashed and refused as not "
        f"images) at {rows['photos_junk']['peak_rss_mb']:,.0f} MB (before this change: "
        f"{old['photos_junk']['peak_rss_mb']:,.0f} MB"
    )


BLOCKS: dict[str, Callable[[Path], str]] = {
    "effort": effort_table,
    "effort_seeds": effort_seeds,
    "fastdup": fastdup_peer,
    "loop_sessions": loop_sessions,
    "throughput": throughput_table,
    "throughput_steps": throughput_steps,
    "default_speed": default_speed,
    "stages": stage_table,
    "stage_runs": stage_runs,
    "memory": memory_peaks,
}
TABLES = {"effort", "throughput", "stages"}  # markers on their own lines; the others are inline


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- figures:{name} -->)(.*?)(<!-- /figures:{name} -->)", re.S)


def render(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with every generated block rewritten from ``results``."""
    for name, make in BLOCKS.items():
        body = make(results)
        body = f"\n{body}\n" if name in TABLES else body
        pattern = _pattern(name)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no <!-- figures:{name} --> block")
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), readme)
    return readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not current")
    args = ap.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        stale = [n for n in BLOCKS if _pattern(n).search(text)[2] != _pattern(n).search(new)[2]]
        if stale:
            print(f"README.md figures differ from bench outputs: {', '.join(stale)}"
                  " (run python bench/readme_figures.py)", file=sys.stderr)  # fmt: skip
            sys.exit(1)
        return
    if new != text:
        README.write_text(new)


if __name__ == "__main__":
    main()
