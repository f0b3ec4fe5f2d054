"""Click to settled: how long an annotator waits after a click on a page of about 100 faces
(issue 31). `labeler app` in a subprocess, headless Chromium, the Cluster view of a ~100-face
cluster at 96 faces a page: Enter (bulk assign) until its message shows and the page has
settled (no element stale, no running indicator), Undo, one tick, a label key.

Prints a table (median, min, max of --repeat clicks each) and writes
bench/results/clicks_<tag>.{json,md}. PYTHONPATH=<checkout> measures another checkout: the
script and the app it starts (run in that checkout's folder) both import it from there.

    python bench/bench_clicks.py [--repeat 7] [--faces 210] [--tag after]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def settled(page) -> None:
    """Streamlit's rerun is over: no running indicator, no stale element, twice 50 ms apart."""
    for _ in range(2):
        page.wait_for_function(
            """() => !document.querySelector('[data-testid="stStatusWidget"]')
                     && !document.querySelector('[data-stale="true"]')""",
            timeout=60_000,
            polling=20,
        )
        page.wait_for_timeout(50)


def timed(page, act, until: str | None = None) -> float:
    t0 = time.perf_counter()
    act()
    if until:
        page.get_by_text(re.compile(until)).first.wait_for(timeout=60_000)
    page.wait_for_timeout(60)  # the rerun's first message reaches the page
    settled(page)
    return time.perf_counter() - t0 - 0.1  # less the two fixed 50 ms checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--faces", type=int, default=210)
    ap.add_argument("--tag", default="after")
    ap.add_argument("--during-suggest", default="", metavar="WORKSPACE",
                    help="a copy of this workspace (built by 'labeler run'; its labels are "
                    "dropped): ticks while the background Suggest run that a bulk label "
                    "starts is working, against ticks with no run")  # fmt: skip
    ap.add_argument("--redo", action="store_true", help="also time Redo, and Undo after it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "clicks"))
    args = ap.parse_args()
    from appserver import running_app
    from playwright.sync_api import sync_playwright
    from synthetic import synthetic_workspace

    import labeler

    # the app is started as `python -c ...`, which imports labeler from its working folder
    # first: the checkout measured must be that folder too (else PYTHONPATH is not enough)
    os.chdir(Path(labeler.__file__).parents[1])
    tmp = Path(tempfile.mkdtemp(prefix="bench_clicks_"))
    if args.during_suggest:
        from labeler.workspace import Workspace

        shutil.copytree(args.during_suggest, tmp / "ws", ignore=shutil.ignore_patterns(
            "labels.db*", "suggest", "backups"))  # fmt: skip
        try:
            return during_suggest(Workspace.open(tmp / "ws"), args)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ws = synthetic_workspace(tmp / "ws", n_faces=args.faces, n_clusters=2, noise_frac=0.0,
                             seed=3)  # fmt: skip
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    times: dict[str, list[float]] = {"Enter (assign ~100)": [], "Undo": [], "tick one face": [],
                                     "label key": [], "Redo": [], "Undo after Redo": []}  # fmt: skip
    with (
        running_app(ws.root, env={"LABELER_ANNOTATOR": "bench"}) as (url, _p),
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url + "/clusters", wait_until="domcontentloaded")
        page.locator(".st-key-open_0 button").click()
        page.get_by_role("heading", name="Cluster view").wait_for(timeout=60_000)
        settled(page)
        page.locator(".st-key-page_size").get_by_role("combobox").click()
        page.get_by_role("option", name="96", exact=True).click()
        settled(page)
        page.wait_for_timeout(1500)
        n = len(page.locator("[class*='st-key-sel_'] input").all())
        boxes = page.locator("[class*='st-key-sel_'] label")
        for i in range(args.repeat):
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            key = str(1 + i % 2)
            times["label key"].append(timed(page, lambda k=key: page.keyboard.press(k)))
            times["tick one face"].append(timed(page, lambda: boxes.nth(5).click()))
            times["tick one face"].append(timed(page, lambda: boxes.nth(5).click()))
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            times["Enter (assign ~100)"].append(
                timed(page, lambda: page.keyboard.press("Enter"), r"Labeled \d+ faces")
            )
            times["Undo"].append(
                timed(
                    page,
                    lambda: page.locator(".st-key-undo_btn button").click(),
                    r"Undid event \d+",
                )  # fmt: skip
            )
            if args.redo:  # the labels back, then away again: is it Undo, or what it undoes?
                times["Redo"].append(timed(
                    page, lambda: page.locator(".st-key-redo_btn button").click(),
                    r"Redid event \d+"))  # fmt: skip
                times["Undo after Redo"].append(timed(
                    page, lambda: page.locator(".st-key-undo_btn button").click(),
                    r"Undid event \d+"))  # fmt: skip
        browser.close()
    shutil.rmtree(tmp, ignore_errors=True)
    head = (f"click to settled, Cluster view, {n} faces on the page, labeler at "
            f"{Path(labeler.__file__).parents[1]} ({args.tag})")  # fmt: skip
    rows = write_table(head, times, Path(f"{args.out}_{args.tag}"))
    Path(f"{args.out}_{args.tag}.json").write_text(
        json.dumps({"faces_on_page": n, "actions": rows}, indent=1) + "\n"
    )


def write_table(head: str, times: dict[str, list[float]], out: Path) -> dict[str, dict]:
    """Print and write ``out``.md (median, min, max and count of each action's seconds) and
    ``out``.json (the same rows); returns the rows."""
    rows = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
            for k, v in times.items() if v}  # fmt: skip
    lines = [head, "", "| action | median s | min s | max s | clicks |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | {r['n']} |"
              for k, r in rows.items()]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def during_suggest(ws, args) -> None:
    """Ticks on the Cluster view while the Suggest run a bulk label started works (it runs
    by itself after 25 new labels), against ticks with no run: what an annotator feels
    every 25 labels on a big workspace. Each round labels the next page's 96 faces."""
    from appserver import running_app
    from playwright.sync_api import sync_playwright

    import labeler
    from labeler.loop import step

    busy: list[float] = []
    idle: list[float] = []
    seconds: list[float] = []
    with (
        running_app(ws.root, env={"LABELER_ANNOTATOR": "bench"}) as (url, _p),
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    headless=True, args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        for i in range(args.repeat):
            # cluster i, 96 faces a page: ticks with no run, then Enter labels the cluster
            # (over 25 new labels: the app starts a Suggest run), ticks while it works
            page.goto(url + "/clusters", wait_until="domcontentloaded")
            page.locator(f".st-key-open_{i} button").click()
            page.get_by_role("heading", name="Cluster view").wait_for(timeout=60_000)
            settled(page)
            if i == 0:
                page.locator(".st-key-page_size").get_by_role("combobox").click()
                page.get_by_role("option", name="96", exact=True).click()
                settled(page)
            page.wait_for_timeout(1000)
            boxes = page.locator("[class*='st-key-sel_'] label")
            for _ in range(4):  # no run going
                idle.append(timed(page, lambda b=boxes: b.nth(5).click()))
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            field = "mask_state"
            before = step.read_status(ws, field).get("started")
            page.keyboard.press("Enter")
            t0 = time.perf_counter()
            while step.read_status(ws, field).get("started") == before:  # the run it starts
                if time.perf_counter() - t0 > 60:
                    raise TimeoutError("no Suggest run started after a bulk label")
                time.sleep(0.02)
            settled(page)
            while step.read_status(ws, field)["state"] == "running":
                busy.append(timed(page, lambda b=boxes: b.nth(5).click()))
            seconds.append(time.perf_counter() - t0)
            status = step.read_status(ws, field)
            if status["state"] != "done":
                raise RuntimeError(f"the Suggest run did not finish: {status}")
        browser.close()
    head = (f"ticks on the Cluster view (96 faces a page) of {Path(args.during_suggest).name} "
            f"({len(ws.faces()):,} faces), with and without a background Suggest run (runs lasted "
            f"{statistics.median(seconds):.1f} s, median), labeler at "
            f"{Path(labeler.__file__).parents[1]} ({args.tag})")  # fmt: skip
    write_table(head, {"tick, no run going": idle, "tick while Suggest runs": busy},
                Path(f"{args.out}_suggest_{args.tag}"))  # fmt: skip


if __name__ == "__main__":
    main()
