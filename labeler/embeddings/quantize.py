"""Int8 EfficientNet-Lite0 for onnxruntime on the CPU: per-channel int8 weights, uint8
activations whose ranges were measured on real face crops.

The float export of :mod:`labeler.embeddings.onnx_runtime` is rewritten by onnxruntime's
public ``quantize_static`` (QDQ format; the shipped ranges go in as its calibration cache, so
nothing is calibrated at install time): every convolution after the first six gets
per-output-channel int8 weights, every activation a uint8 scale taken from
:data:`RANGES_FILE` (the spread of each tensor over real nose-band, mouth-chin and box crops of
the shared face sets, measured by ``bench/bench_embed.py --calibrate``; the numbers ship with
the package, the images do not).
Nodes listed in the ranges file's ``keep_float`` stay float. Runs on any x86 CPU; fast where
the CPU has AVX-512 VNNI or AVX-VNNI. On an x86 CPU without VNNI (AVX2 only) onnxruntime
multiplies uint8 by int8 with ``vpmaddubsw``, whose 16-bit sums saturate: there the weights
are quantized to 7 bits (``reduce_range``, :func:`needs_reduce_range`), as onnxruntime
advises. Measured on 96 realmasks crops on an AVX2-only CPU (2 busy cores): 8-bit weights
gave a mean cosine of 0.974 to the float features (worst crop 0.915), 7-bit 0.989 (worst
0.967) at 7.8 ms a crop against 12.3 ms in float; uint8 weights (no saturation) 0.995 but
2.2x slower than float, so not used. The choice is part of the int8 model's cache key, so
a cache copied between the two kinds of CPU rebuilds it.

The ranges belong to one export of one model (tensor names of the float graph): when the
float export has a tensor the file does not cover (another torch, another model),
:func:`quantize_onnx` raises :class:`QuantizeError` and the caller keeps the float model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from labeler.embeddings.types import BackboneError

log = logging.getLogger(__name__)

#: The shipped activation ranges (a module, so that wheels carry it): ``TABLE = {"arch",
#: "input_size", "keep_float", "ranges": {tensor: [lo, hi]}, ...}``.
RANGES_FILE = Path(__file__).with_name("int8_ranges.py")
#: Bump when the quantization recipe changes (part of the cache hash).
QUANT_VERSION = 1


def needs_reduce_range(cpuinfo: str | None = None) -> bool:
    """Whether int8 weights must be 7-bit on this CPU: an x86 CPU without AVX-512 VNNI or
    AVX-VNNI (``cpuinfo``: the text of ``/proc/cpuinfo``; read here when None)."""
    import platform

    if platform.machine().lower() not in {"x86_64", "amd64", "i686", "x86"}:
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: assume the safe recipe
            return True
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return not ({"avx512_vnni", "avx_vnni"} & flags)


class QuantizeError(BackboneError):
    """The float model cannot be quantized with the shipped ranges (message says why)."""


def read_ranges(path: Path = RANGES_FILE) -> dict[str, Any]:
    """The ranges table of ``path`` (a module defining ``TABLE``); :class:`QuantizeError`
    when it is missing or unreadable."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
        value = next(
            n.value
            for n in tree.body
            if isinstance(n, ast.Assign) and [getattr(t, "id", "") for t in n.targets] == ["TABLE"]
        )
        data = dict(ast.literal_eval(value))
        data["ranges"] = {k: (float(lo), float(hi)) for k, (lo, hi) in data["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, StopIteration) as exc:
        raise QuantizeError(
            f"cannot read the int8 ranges {path} ({exc!r}); reinstall labeler or use "
            "precision='fp32'"
        ) from None
    return data


def write_ranges(table: dict[str, Any], path: Path = RANGES_FILE) -> Path:
    """Write ``table`` as the ranges module ``path`` (what :func:`read_ranges` reads)."""
    import pprint

    body = pprint.pformat(table, width=99, sort_dicts=False)
    path.write_text(
        '"""int8 activation ranges of EfficientNet-Lite0 at 224 px, measured on real face crops.\n\n'
        "Written by ``bench/bench_embed.py --calibrate`` (see :mod:`labeler.embeddings.quantize`); a\n"
        'Python module so that it ships in every wheel. Do not edit by hand.\n"""\n\n'
        f"TABLE = {body}\n"
    )
    return path


def activation_tensors(model: Any) -> list[str]:
    """Names of the float tensors the QDQ quantizer gives a scale to: inputs and outputs of
    the Conv / Clip / Add / GlobalAveragePool nodes (the graph's ops after the uint8 input's
    normalisation)."""
    ops = {"Conv", "Clip", "Add", "GlobalAveragePool", "Relu"}
    inits = {i.name for i in model.graph.initializer}
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in ops:
            for t in (*node.input, *node.output):
                if t and t not in inits:
                    names[t] = None
    return list(names)


#: convolutions (with their ReLU6) kept in float, counted from the input: quantizing any one of
#: the first six alone moved the features more than the 43 others together (the stem and the
#: first depthwise convolutions see full-resolution maps with a few large activations)
KEEP_FLOAT_CONVS = 6


def early_nodes(model: Any, n_convs: int = KEEP_FLOAT_CONVS) -> list[str]:
    """Names of the first ``n_convs`` Conv nodes and the Clip nodes that read their outputs."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"][:n_convs]
    outs = {c.output[0] for c in convs}
    clips = [n.name for n in model.graph.node if n.op_type == "Clip" and n.input[0] in outs]
    return [c.name for c in convs] + clips


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    """onnxruntime's pre-quantization pass (shape inference, constant folding) to ``out_path``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def calibrate(
    pre_path: Path,
    batches: Iterable[np.ndarray],
    *,
    percentile: float = 99.99,
    sample: int = 200_000,
    num_threads: int = 2,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Activation ranges of the preprocessed float model over ``batches`` (uint8
    ``(N, S, S, 3)`` crops), by running a copy of the graph that outputs every activation.

    Per batch, the ``100 - percentile`` and ``percentile`` percentiles of ``sample`` values
    drawn from each tensor; the range is their mean over batches (the low end never above 0).
    Min/max ranges spend most of the 256 levels on a few outliers: on real crops they moved
    the features about twice as far (bench/FEATURES.md "A cheaper model").
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(pre_path))
    wanted = activation_tensors(model)
    outputs = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = num_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    lows: dict[str, list[float]] = {k: [] for k in wanted}
    highs: dict[str, list[float]] = {k: [] for k in wanted}
    for batch in batches:
        for name, value in zip(wanted, sess.run(wanted, {"images": batch}), strict=True):
            flat = value.reshape(-1)
            flat = flat[rng.integers(0, len(flat), sample)]
            lo, hi = np.percentile(flat, [100 - percentile, percentile])
            lows[name].append(float(lo))
            highs[name].append(float(hi))
    if not any(lows.values()):
        raise ValueError("calibrate: no batches")
    return {k: (min(0.0, float(np.mean(lows[k]))), float(np.mean(highs[k]))) for k in wanted}


def quantize_onnx(
    pre_path: Path,
    out_path: Path,
    ranges: dict[str, tuple[float, float]],
    *,
    keep_float: Iterable[str] = (),
    reduce_range: bool = False,
) -> Path:
    """Write the QDQ int8 model of the preprocessed float model ``pre_path`` to ``out_path``:
    per-channel int8 weights (7-bit with ``reduce_range``: for CPUs without VNNI, see
    :func:`needs_reduce_range`), uint8 activations with the given ``ranges`` (tensor ->
    (lo, hi)), the nodes named in ``keep_float`` left in float."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        TensorsData,
        quantize_static,
        save_tensors_data,
    )

    model = onnx.load(str(pre_path))
    missing = [t for t in activation_tensors(model) if t not in ranges]
    if missing:
        raise QuantizeError(
            f"the int8 ranges do not cover {len(missing)} tensors of {pre_path.name} (e.g. "
            f"{missing[0]!r}): the export differs from the calibrated one; use precision='fp32'"
        )
    keep_float = list(keep_float)
    names = {n.name for n in model.graph.node}
    unknown = [k for k in keep_float if k not in names]
    if unknown:
        raise QuantizeError(
            f"the int8 ranges keep {unknown[0]!r} in float but {pre_path.name} has no such node: "
            "the export differs from the calibrated one; use precision='fp32'"
        )
    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()},
    )
    with tempfile.TemporaryDirectory() as tmp:
        # the shipped ranges go in as onnxruntime's calibration cache: no calibration run
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(tensors, cache)
        quantize_static(
            pre_path,
            out_path,
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Clip", "Add", "GlobalAveragePool"],
            per_channel=True,
            reduce_range=reduce_range,  # 7-bit weights where uint8 x int8 sums saturate (no VNNI)
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={},
            calibration_cache_path=cache,
        )
    return out_path
