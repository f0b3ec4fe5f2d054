"""README figures from the bench outputs, so the two cannot drift (issue 23).

Every generated figure in README.md sits between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->`` (on their own lines around a table, inline around a phrase) and is
written here from a file under ``bench/results/`` or a bench ``.md`` result; a hand-copied
number is what drifted before. ``tests/test_readme_figures.py`` checks that README.md is what
this script writes.

    python bench/readme_figures.py          # rewrite README.md's generated figures
    python bench/readme_figures.py --check  # exit 1 (and say which block) if README.md differs

The numbers left in prose are checked too (:func:`untraced`): a passage that cites a bench
output or note must find each of its numbers there, and in the measured sections every
passage with a number must cite one. ``--check`` fails on either.

Sources: ``results/grouping.json`` (``bench/bench_grouping.py``: the effort table and its
seed ranges), ``results/fastdup_kmeans.json`` (``bench/bench_fastdup.py``), ``LOOP.md``
(``bench/bench_loop.py``: synthetic sessions), ``results/cpu_shipped.json``
(``bench/bench_pipeline.py --shipped --repeat 3 --runs 3 --json``), ``results/cpu_pipeline.json``
and ``results/gpu_h100_*`` (``bench/bench_pipeline.py``, ``bench/bench_embed.py``,
``bench/run_on_gpu.sh``), ``results/memory.json`` (``bench/bench_memory.py``),
``results/cluster.json`` and ``cluster_million.json`` (``bench/bench_cluster.py --json``,
``--million``), ``results/app.json`` (``bench/bench_app.py --json``).
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
    "demo": "demo set (measured on the earlier demo, masks painted on scikit-image's astronaut; 5 states, one face, heavy augmentation)",
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
    "labeler run --no-cluster --features fast (the blocks at 128 px)": (
        "`labeler run --no-cluster --features fast` (the same blocks at 128 px)"
    ),
    "labeler run --no-cluster --features face (one region)": (
        "`labeler run --no-cluster --features face` (one region)"
    ),
    "labeler predict (default head model)": "`labeler predict` (a head model on the default features)",
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


def _shipped(results: Path) -> dict[str, dict]:
    """``cpu_shipped.json``'s rows by command (``bench/bench_pipeline.py --shipped``)."""
    return {r["command"]: r for r in _json(results, "cpu_shipped.json")}


def shipped_run(results: Path) -> str:
    rows = _shipped(results)
    info, default = rows["run info"], rows["labeler run --no-cluster (default)"]
    return (
        f"{info['photos']:,} photos of `maskedfacenet_1024`, {default['faces']:,} faces, median "
        f"of {info['runs']} interleaved runs, {info['date']} at commit {info['commit']}, the "
        f"{info['cores']}-core development machine (load average {info['load_start']:.1f} at "
        f"the start, {info['load_end']:.1f} at the end)"
    )


def throughput_table(results: Path) -> str:
    rows = _shipped(results)
    out = [
        "| command | faces/s (min-max) | CPU ms/face | peak memory of the command | vs naive |",
        "|---|---|---|---|---|",
    ]
    for command, label in SHIPPED.items():
        r = rows[command]
        speed = f"{_f1(r['faces_s_median'])} ({_f1(r['faces_s_min'])}-{_f1(r['faces_s_max'])})"
        ratio = f"{r['vs_naive']:.2f}x"
        if command.endswith("(default)"):
            speed, ratio = f"**{_f1(r['faces_s_median'])}**{speed[4:]}", f"**{ratio}**"
        rss = f"{r['peak_rss_gb']:.2f} GB"
        out.append(f"| {label} | {speed} | {_f1(r['cpu_ms_per_face'])} | {rss} | {ratio} |")
    return "\n".join(out)


def throughput_steps(results: Path) -> str:
    steps = _shipped(results)["steps of the default run, wall ms/face"]
    parts = [f"{k.replace('+', ' + ')} {_f1(v)}" for k, v in steps.items() if k != "command"]
    return ", ".join(parts) + " (detection and embedding overlap)"


def default_speed(results: Path, photos: int = 133_000) -> str:
    """What the default speed means for 133,000 one-face photos, clustering included."""
    rows = _shipped(results)
    r, info = rows["labeler run --no-cluster (default)"], rows["run info"]
    cluster = _json(results, "cluster.json")["main"]
    minutes = photos / r["faces_s_median"] / 60
    return (
        f"At {_f1(r['faces_s_median'])} faces/s, {photos:,} one-face photos take about "
        f"{minutes:.0f} minutes on {info['cores']} cores, plus {cluster['total_s']:.0f} s to "
        f"cluster {cluster['n']:,} faces (`bench_cluster.py`, below)"
    )


def _stages(results: Path) -> dict[str, float]:
    """CPU ms per face of each stage (``bench_pipeline.stage_costs``), without its sums."""
    row = _shipped(results)["CPU ms/face per stage (one thread)"]
    return {
        k: v for k, v in row.items() if k not in ("command", "total", "outside the model", "faces")
    }


def stage_costs(results: Path) -> str:
    row = _shipped(results)["CPU ms/face per stage (one thread)"]
    stages = _stages(results)
    assert abs(sum(stages.values()) - row["total"]) < 0.5, "the stages no longer add up"
    out = [f"| stage ({row['faces']:.0f} faces) | CPU ms per face |", "|---|---|"]
    out += [f"| {k} | {_f1(v)} |" for k, v in stages.items()]
    out.append(f"| **total** | **{_f1(row['total'])}** |")
    out.append(f"| of it outside the model | {_f1(row['outside the model'])} |")
    return "\n".join(out)


def target_gap(results: Path, target: float = 60.0) -> str:
    rows = _shipped(results)
    total = rows["CPU ms/face per stage (one thread)"]["total"]
    cores = rows["run info"]["cores"]
    (model,) = [v for k, v in _stages(results).items() if k.startswith("model forward")]
    whole = rows["labeler run --no-cluster (default)"]["cpu_ms_per_face"]
    return (
        f"{target:.0f} faces/s on {cores} cores leaves {1000 * cores / target:.0f} CPU ms per "
        f"face; the default path costs {_f1(total)} stage by stage, {_f1(model)} of them in "
        f"the model's three forward passes, and {_f1(whole)} as a whole process (start-up, "
        "threads and writes included)"
    )


def _embed_txt(results: Path, path_name: str) -> float:
    """crops/s of one row of ``gpu_h100_embed.txt`` (bench/bench_embed.py's table)."""
    for line in (results / "gpu_h100_embed.txt").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == path_name:
            return float(cells[2])
    raise ValueError(f"gpu_h100_embed.txt has no row {path_name!r}")


def embed_rates(results: Path) -> str:
    """Embedding alone: the 2-core run of ``cpu_pipeline.json`` and the H100's table."""
    cpu = _json(results, "cpu_pipeline.json")
    diff = re.search(
        r"feature difference: ([\d.e+-]+)", (results / "gpu_h100_embed.txt").read_text()
    )
    assert diff, "gpu_h100_embed.txt no longer states the torch / ONNX Runtime difference"
    ort, eager = cpu["embed_labeler_crops_s"], cpu["embed_eager_crops_s"]

    def g(name: str) -> str:
        return f"{_embed_txt(results, name):,.0f}"

    return (
        f"on {cpu['cores']} CPU cores ONNX Runtime runs EfficientNet-Lite0 at {ort:.0f} crops/s "
        f"against {eager:.0f} for torch eager ({ort / eager:.1f}x; features equal to "
        f"{float(diff.group(1)):.0e}). On one H100: {g('labeler CUDA bf16 + channels_last')} "
        f"crops/s (bf16 + channels_last, batch 128; fp32 eager {g('torch CUDA fp32 (NCHW)')}), "
        f"{g('end-to-end: GPU decode + CUDA bf16')} with nvJPEG GPU decode of the crops feeding "
        f"it, {g('end-to-end: CPU decode + CUDA bf16')} with CPU decode (16 threads); the "
        f"`labeler embed` step itself (shards, resumable) ran at "
        f"{g('labeler embed end-to-end, bf16, cuda decode')} crops/s with GPU decode on a "
        f"512-crop run"
    )


def gpu_run(results: Path) -> str:
    """The H100 run's phases, from the log ``bench/run_on_gpu.sh`` kept."""
    text = (results / "gpu_h100_fused_pipeline.txt").read_text()
    gpu = _json(results, "gpu_h100_fused_pipeline.json")
    m = re.search(r"FusedStats\(.*?faces_gpu=(\d+).*?seconds_gpu=([\d.]+), phases=(\{.*?\})", text)
    cpu_faces = re.search(r"DetectResult\(processed=\d+.*?total_faces=(\d+)", text)
    assert m and cpu_faces, "gpu_h100_fused_pipeline.txt no longer has the fused pass's stats"
    phases = json.loads(m.group(3).replace("'", '"'))
    files, ingest = gpu["images"], gpu["labeler_ingest_s"]
    fused, cpu_n = int(m.group(1)), int(cpu_faces.group(1))
    return (
        f"`labeler run` took {ingest:.1f} s to ingest {files:,} files (read, hashed and verified "
        f"in {gpu['cores']} processes: {files / ingest:,.0f} files/s) and "
        f"{gpu['labeler_detect+embed_s']:.1f} s to detect, align and embed. The fused pass spent, "
        f"of its {float(m.group(2)):.1f} s: nvJPEG decode {phases['decode']:.1f}, BlazeFace "
        f"{phases['detect']:.1f}, alignment and per-face bookkeeping {phases['align']:.1f}, GPU "
        f"JPEG encode {phases['encode']:.1f}, embedding {phases['embed']:.1f} (cuDNN autotuned "
        f"every new batch shape, seconds each: the same run's embed row shows "
        f"{gpu['embed_labeler_crops_s']:.0f} crops/s for 256 crops), waiting for file reads "
        f"{phases['read_wait']:.1f} and writes {phases['write_wait']:.1f}. It found "
        f"{fused - cpu_n:,} more faces than the CPU path ({fused:,} vs {cpu_n:,})"
    )


def cluster_table(results: Path) -> str:
    """``bench_cluster.py`` (133,000 faces) and ``--million``."""
    main, mil = _json(results, "cluster.json"), _json(results, "cluster_million.json")
    m, big = main["main"], mil["million"]

    def steps(d: dict) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in d["steps_s"].items())

    knn = main["knn_sample"]
    split = main["split_5000_s"]
    return "\n".join(
        [
            "| what | result |",
            "|---|---|",
            f"| cluster {m['n']:,} x {m['d']:,} end to end (the default, {m['algorithm']}; fit "
            f"+ save) | **{m['total_s']:.0f} s** wall, {m['cpu_s']:.0f} s CPU on "
            f"{main['cores']} cores (load average {m['load_start']:.1f} at the start); peak RSS "
            f"{m['peak_rss_gb']:.2f} GB |",
            f"| its steps, s | {steps(m)}, save {m['save_s']:.1f} |",
            f"| groups, and how pure | {m['clusters']:,} groups of {m['group_faces_mean']:.0f} "
            f"faces on average (the largest {m['group_faces_max']:,}); purity {m['purity']:.3f} (faces "
            f"whose group's majority is their generated cluster); ARI {m['ari_in_cluster']:.3f} "
            "(ARI counts a cluster cut into page-sized groups as wrong) |",
            f"| kNN for UMAP on its {knn['faces']:,}-face sample: FAISS {knn['faiss_kind']} vs "
            f"UMAP's own NN-descent | {knn['faiss_s']:.1f} s (recall {knn['faiss_recall']:.3f}) vs "
            f"{knn['nndescent_cold_s']:.1f} s first use (numba compile), "
            f"{knn['nndescent_warm_s']:.1f} s warm (recall {knn['nndescent_warm_recall']:.3f}) |",
            "| split a 5,000-face group | "
            + " / ".join(f"{v:.2f} s ({k})" for k, v in split.items())
            + " |",
            f"| cluster {big['n']:,} x {big['d']:,} (float16 memmap, streamed; "
            f"{big['algorithm']}) | {big['total_s']:.0f} s, peak anonymous memory "
            f"{big['peak_anon_gb']:.1f} GB, {big['group_faces_mean']:.0f} faces a group on "
            f"average (the largest {big['group_faces_max']:,}), purity {big['purity']:.3f} |",
        ]
    )


def app_setup(results: Path) -> str:
    a = _json(results, "app.json")
    return (
        f"{a['faces']:,} faces in {a['clusters']} clusters (plus one of {a['big_cluster']:,} "
        f"faces), {a['prelabeled']:,} of them already labeled in {a['prelabel_events']:,} events"
    )


def app_table(results: Path) -> str:
    a = _json(results, "app.json")
    pages = ("overview", "clusters", "cluster_view", "map", "review", "settings", "try_it")
    warm = " / ".join(f"{a[f'page_warm_{p}_ms']:.0f}" for p in pages)
    cold = max(pages, key=lambda p: a[f"page_cold_{p}_ms"])
    same = "same answer" if a["window_same_answer"] else "DIFFERENT answers"
    return "\n".join(
        [
            f"| what (load average {a['load_start']:.1f} at the start) | time |",
            "|---|---|",
            f"| bulk-assign the {a['big_cluster']:,}-face cluster (one transaction) | "
            f"**{a['assign_ms']:.0f} ms** (CPU {a['assign_cpu_ms']:.0f} ms) |",
            "| the same as one transaction per face (naive), extrapolated from 1,000 | "
            f"{a['naive_assign_big_s']:.1f} s |",
            f"| undo / redo of that assignment | {a['undo_ms']:.0f} / {a['redo_ms']:.0f} ms |",
            "| current labels from the maintained `current` table vs a window query over all "
            f"events | {a['current_table_ms']:.0f} vs {a['window_query_ms']:.0f} ms ({same}) |",
            "| page switch, warm: overview / clusters / cluster view / map / review / settings / "
            f"try it | {warm} ms |",
            f"| page switch, first visit: slowest ({cold.replace('_', ' ')}) | "
            f"{a[f'page_cold_{cold}_ms']:.0f} ms |",
            "| click *Assign* on the big cluster, including the rerun | "
            f"{a['click_assign_ms']:.0f} ms |",
            f"| the map's hover thumbnails ({a['thumbs_faces']:,} faces, most of its first "
            f"visit): {a['cores']} threads / one thread / the previous PIL loop | "
            f"**{a['thumbs_threads_s']:.1f}** / {a['thumbs_one_thread_s']:.1f} / "
            f"{a['thumbs_naive_s']:.1f} s |",
            f"| map sent to the browser: {a['map_points']:,} sampled points vs all "
            f"{a['all_points']:,} (x, y only) | {a['map_mb']:.2f} vs {a['all_points_mb']:.2f} MB |",
        ]
    )


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


# ---- prose numbers: every number in a passage that cites a source is in that source ----------

# a file a passage cites: bench outputs and notes, the app's notes
SOURCE = re.compile(r"(?:bench/results/[\w.-]+\.(?:json|txt|md)|bench/[A-Z]+\.md|docs/[A-Z]+\.md)")
NUMBER = re.compile(
    r"(?<![\w.])(?:\d{4}-\d{2}-\d{2}|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:e-?\d+)?)"
    r"(?![\w-]*[A-Za-z]{2})"  # not part of a name (eff95, 2-D, 10-d is a number)
)
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# the sections in which every passage with a number cites a bench output or is generated
MEASURED = ("## Measurements",)
# settings quoted in passages that also cite a bench note: each is traced to the code that
# sets it (the number must be in that file, as 20_000 or 20000)
SETTINGS = {
    "20,000": "labeler/cluster/run.py",  # UMAP's sample, the map's points
    "256": "labeler/faces/regions.py",  # CROP_SIZE of the aligned crops
    "120": "labeler/cluster/run.py",  # GROUP_SIZE, faces a group
    "128": "labeler/detect/fused.py",  # the fused pass's BlazeFace view
}


def _passages(readme: str) -> list[tuple[int, str, str, str]]:
    """``(line, section, text, context)`` of each paragraph, list item and table row of
    ``readme`` outside code and generated blocks. ``section`` is the chapter (``## ...``) and
    heading (``### ...``) it is under; ``context`` is where its citations may also stand: for a
    table row, the paragraph right above its table."""
    text = re.sub(
        r"<!-- figures:(\w+) -->.*?<!-- /figures:\1 -->",
        lambda m: "FIGURES" + "\n" * m.group(0).count("\n"),
        readme,
        flags=re.S,
    )
    out: list[tuple[int, str, str, str]] = []
    para: list[str] = []
    chapter = heading = above = ""
    start, code, in_table = 0, False, False

    def flush() -> None:
        nonlocal para, above
        if para:
            above = " ".join(para)
            out.append((start, f"{chapter} {heading}", above, above))
            para = []

    for i, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            if in_table:
                above = ""  # a table's intro is the paragraph right above it only
            in_table = False
        if line.startswith("```"):
            flush()
            code = not code
        elif code:
            continue
        elif line.startswith("#"):
            flush()
            chapter, heading = (line, "") if line.startswith("## ") else (chapter, line)
            above = ""
        elif line.startswith("|"):
            flush()
            in_table = True
            out.append((i, f"{chapter} {heading}", line, line + " " + above))
        elif not line.strip() or re.match(r"\s*(?:- |\d+\. )", line):
            flush()
            if line.strip():
                para, start = [line.strip()], i
        else:
            if not para:
                start = i
            para.append(line.strip())
    flush()
    return out


def _numbers(text: str) -> list[str]:
    """The number tokens of ``text`` outside inline code, targets (``>= 60 faces/s``: what a
    number should reach, not what was measured) left out."""
    return NUMBER.findall(re.sub(r"`[^`]*`|(?:>=|<=)\s*[\d,.]+", " ", text))


def _near(token: str, values: list[float]) -> bool:
    """``token`` is one of ``values`` as rounded for print (16,200 = 16214.6; 99.5 % = 0.995)."""
    plain = token.replace(",", "")
    x = float(plain)
    if "e" in plain:
        tol = abs(x) * 0.05
    elif "." in plain:
        tol = 0.5 * 10 ** -len(plain.split(".")[1])
    else:  # 16200 may stand for 16,214.6: trailing zeros (at most two) are rounding
        zeros = len(plain) - len(plain.rstrip("0")) if len(plain) >= 3 else 0
        tol = 0.5 * 10 ** min(zeros, 2)
    return any(abs(y - x) <= tol or abs(100 * y - x) <= tol for y in values)


class _Source:
    """A cited file: machine outputs (JSON, text tables) are matched with rounding; a bench
    note (``.md``, written from such outputs) must hold the number as the README writes it."""

    def __init__(self, path: Path) -> None:
        text = path.read_text()
        self.dates = set(DATE.findall(text))
        self.verbatim = path.suffix == ".md"
        self.words = {m.replace(",", "") for m in NUMBER.findall(text)}
        self.values = []
        for tok in re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", DATE.sub(" ", text)):
            try:
                self.values.append(float(tok.replace(",", "")))
            except ValueError:
                continue

    def holds(self, token: str) -> bool:
        if DATE.fullmatch(token):
            return token in self.dates
        if self.verbatim:
            return token.replace(",", "") in self.words
        return _near(token, self.values)


def untraced(readme: str, root: Path = BENCH.parent) -> list[str]:
    """Numbers of README.md prose that nothing backs, one line each.

    A passage (paragraph, list item, or table row with the paragraph above its table) that
    cites ``bench/results/*``, ``bench/*.md`` or ``docs/*.md`` must find each of its numbers in
    those files (or, for a setting, in the code that sets it: :data:`SETTINGS`); in the
    measured sections (:data:`MEASURED`) every passage with a number must cite one or be a
    generated figure."""
    sources: dict[str, _Source] = {}
    problems = []
    for line, section, text, context in _passages(readme):
        tokens = _numbers(text)
        if not tokens:
            continue
        cited = list(dict.fromkeys(SOURCE.findall(context)))
        if not cited:
            if any(h in section for h in MEASURED):
                problems.append(f"README.md:{line}: {', '.join(tokens)}: no bench output cited")
            continue
        for name in cited:
            if name not in sources and (root / name).is_file():
                sources[name] = _Source(root / name)
        missing = [n for n in cited if n not in sources]
        if missing:
            problems.append(f"README.md:{line}: cites {', '.join(missing)}, which is missing")
        for tok in tokens:
            if any(sources[n].holds(tok) for n in cited if n in sources):
                continue
            code = SETTINGS.get(tok)
            if code and re.search(rf"\b{tok.replace(',', '_?')}\b", (root / code).read_text()):
                continue
            problems.append(f"README.md:{line}: {tok} is in none of {', '.join(cited)}")
    return problems


BLOCKS: dict[str, Callable[[Path], str]] = {
    "effort": effort_table,
    "effort_seeds": effort_seeds,
    "fastdup": fastdup_peer,
    "loop_sessions": loop_sessions,
    "shipped_run": shipped_run,
    "throughput": throughput_table,
    "throughput_steps": throughput_steps,
    "default_speed": default_speed,
    "stage_costs": stage_costs,
    "target": target_gap,
    "stages": stage_table,
    "stage_runs": stage_runs,
    "memory": memory_peaks,
    "gpu_run": gpu_run,
    "embed": embed_rates,
    "cluster": cluster_table,
    "app_setup": app_setup,
    "app": app_table,
}
TABLES = {
    "effort",
    "throughput",
    "stages",
    "stage_costs",
    "cluster",
    "app",
}  # markers on their own lines; the others are inline


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
        loose = untraced(text, README.parent)
        for line in loose:
            print(line, file=sys.stderr)
        if stale or loose:
            sys.exit(1)
        return
    if new != text:
        README.write_text(new)
    for line in untraced(new, README.parent):
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
