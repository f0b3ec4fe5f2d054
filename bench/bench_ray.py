"""``labeler run --no-cluster`` on the local engine vs ``--engine ray``: faces/s, CPU ms a
face, memory, on this machine.

Every run is the CLI as shipped, in its own process, on a fresh workspace of the same real
photos (MaskedFace-Net at 1024 px and MFR2 from ``../shared``). Configurations:

- ``local``: the local engine (threads, all cores);
- ``ray session``: ``--engine ray`` with no address (labeler starts a local Ray session of all
  cores: start-up included);
- ``ray 1 node`` / ``ray 2 nodes``: ``--engine ray --address`` against Ray's multi-node test
  cluster on 127.0.0.1 (:class:`ray.cluster_utils.Cluster`: a head with no CPUs, which only
  coordinates, and one or two worker nodes of one CPU each, with their own raylets and object
  stores, as separate machines would have; started before the timed run);
- ``ray 1 node x2``: one worker node of two CPUs (the local engine's CPUs, for Ray's overhead).

CPU is the whole machine's (``/proc/stat``, every Ray process included), so nothing else may
run; the load before each run is printed. Memory: the peak resident size of the driver, of
the largest model actor and of the largest task worker, polled every 0.2 s.

    .venv/bin/python bench/bench_ray.py [--repeat 2] [--out bench/results/ray_throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLI = [sys.executable, "-c", "from labeler.cli import main; main()"]


def photos(root: Path, *, mirrored: bool) -> Path:
    """MaskedFace-Net 1024 px (200) and MFR2 (163) photos in one folder; ``mirrored`` adds a
    left-right mirrored copy of each (new content, the same work), twice the photos."""
    from PIL import Image, ImageOps

    out = root / ("photos_x2" if mirrored else "photos")
    out.mkdir(parents=True)
    for name in ("maskedfacenet_1024", "mfr2"):
        for p in sorted((SHARED / name / "images").iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                shutil.copy(p, out / f"{name}_{p.name}")
                if mirrored:
                    with Image.open(p) as im:
                        ImageOps.mirror(im.convert("RGB")).save(
                            out / f"{name}_mirror_{p.stem}.jpg", quality=95
                        )
    return out


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Peaks(threading.Thread):
    """Polls the resident size of the driver and of every Ray worker process."""

    def __init__(self, driver: int) -> None:
        super().__init__(daemon=True)
        self.driver, self.stop = driver, threading.Event()
        self.peak = {"driver": 0, "actor": 0, "task": 0}

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                    rss = _rss(int(pid))
                except (OSError, UnicodeDecodeError):
                    continue
                role = (
                    "driver"
                    if int(pid) == self.driver
                    else "actor"
                    if cmd.startswith("ray::MapWorker")
                    else "task"
                    if cmd.startswith("ray::")
                    else None
                )
                if role:
                    self.peak[role] = max(self.peak[role], rss)
            self.stop.wait(0.2)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def timed_run(images: Path, ws: Path, env: dict[str, str], extra: list[str]) -> dict:
    load = os.getloadavg()[0]
    c0, t0 = machine_cpu_s(), time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, "run", str(images), "-w", str(ws), "--no-cluster", "--no-progress", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks = Peaks(proc.pid)
    peaks.start()
    out, err = proc.communicate()
    wall, cpu = time.perf_counter() - t0, machine_cpu_s() - c0
    peaks.stop.set()
    peaks.join()
    if proc.returncode:
        raise SystemExit(f"run failed ({extra}): {err[-2000:]}")
    faces = int(out.split(" faces")[0].split()[-1])
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "faces": faces,
        "load_before": load,
        **{f"peak_{k}_mb": v / 2**20 for k, v in peaks.peak.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ray_throughput"))
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    sets = {"N": photos(root, mirrored=False), "2N": photos(root, mirrored=True)}
    env = {**os.environ, "LABELER_CACHE": str(root / "cache")}
    # the ONNX export and model files once, outside the timed runs
    timed_run(sets["N"], root / "warm", env, [])

    def cluster(nodes: list[int]) -> Cluster:
        c = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={"num_cpus": 0, "include_dashboard": False},
        )
        for n in nodes:
            c.add_node(num_cpus=n)
        c.wait_for_nodes()
        time.sleep(3)  # the nodes' start-up CPU settles before the timed run
        return c

    configs: list[tuple[str, int, list[int] | None, list[str]]] = [
        ("local", 2, None, []),
        ("ray session", 2, None, ["--engine", "ray"]),
        ("ray 1 node", 1, [1], []),
        ("ray 2 nodes", 2, [1, 1], []),
        ("ray 1 node x2", 2, [2], []),
    ]
    results: dict[str, dict[str, list[dict]]] = {n: {"N": [], "2N": []} for n, *_ in configs}
    for rep in range(args.repeat):
        for size, images in sets.items():
            for name, _, nodes, extra in configs:
                ws = root / f"ws_{rep}_{size}_{name.replace(' ', '_')}"
                if nodes is None:
                    got = timed_run(images, ws, env, extra)
                else:
                    c = cluster(nodes)
                    try:
                        got = timed_run(
                            images, ws, env, ["--engine", "ray", "--address", c.address]
                        )
                    finally:
                        c.shutdown()
                shutil.rmtree(ws, ignore_errors=True)
                results[name][size].append(got)
                print(f"{name} {size} #{rep + 1}: {json.dumps(got)}", flush=True)

    def med(rows: list[dict], key: str) -> float:
        vals = sorted(r[key] for r in rows)
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

    def figures(name: str) -> dict[str, float]:
        a, b = results[name]["N"], results[name]["2N"]
        fa, fb = a[0]["faces"], b[0]["faces"]
        return {
            "fps": fb / med(b, "wall_s"),
            "cpu_ms": med(b, "cpu_s") / fb * 1000,
            "marginal_cpu_ms": (med(b, "cpu_s") - med(a, "cpu_s")) / (fb - fa) * 1000,
            "marginal_fps": (fb - fa) / (med(b, "wall_s") - med(a, "wall_s")),
            "fixed_cpu_s": med(a, "cpu_s") - fa * (med(b, "cpu_s") - med(a, "cpu_s")) / (fb - fa),
            "driver_mb": med(b, "peak_driver_mb"),
            "actor_mb": med(b, "peak_actor_mb"),
            "task_mb": med(b, "peak_task_mb"),
        }

    figs = {name: figures(name) for name, *_ in configs}
    local = figs["local"]
    n_faces = results["local"]["2N"][0]["faces"]
    lines = [
        "# labeler run --no-cluster: the local engine vs --engine ray, 2-core machine",
        "",
        f"{n_faces} faces of {sum(1 for _ in sets['2N'].iterdir())} real photos (MaskedFace-Net "
        f"1024 px and MFR2, each also mirrored); 'marginal' figures come from the difference "
        f"to a run on the half without mirrors ({results['local']['N'][0]['faces']} faces), "
        f"which takes out what a run costs once (Ray's start, the actors' start, model loads). "
        f"Median of {args.repeat}. CPU is the whole machine's, every Ray process included.",
        "",
        "| configuration | CPUs | faces/s | vs local | marginal faces/s | CPU ms a face | "
        "marginal CPU ms a face | Ray's extra CPU ms a face (marginal) | once per run, CPU s | "
        "driver MB | largest actor MB | largest task worker MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cpus, _, _ in configs:
        f = figs[name]
        lines.append(
            f"| {name} | {cpus} | {f['fps']:.1f} | {f['fps'] / local['fps']:.2f}x | "
            f"{f['marginal_fps']:.1f} | {f['cpu_ms']:.1f} | {f['marginal_cpu_ms']:.1f} | "
            f"{f['marginal_cpu_ms'] - local['marginal_cpu_ms']:+.1f} | {f['fixed_cpu_s']:.1f} | "
            f"{f['driver_mb']:.0f} | {f['actor_mb']:.0f} | {f['task_mb']:.0f} |"
        )
    loads = [r["load_before"] for per in results.values() for rows in per.values() for r in rows]
    lines += [
        "",
        f"Load average before the runs: {min(loads):.2f} to {max(loads):.2f}. Wall time from the "
        "command's start to its exit (the Ray session's start included in 'ray session'; the "
        "clusters were started before each run: a head with no CPUs and worker nodes of the "
        "CPUs shown, on 127.0.0.1). The nodes share this machine's two cores, so '1 node' and "
        "'2 nodes' differ in what Ray may schedule at once, not in the hardware. "
        "The bench: `bench/bench_ray.py`.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"runs": results, "figures": figs}, indent=1) + "\n"
    )
    print("\n".join(lines))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
