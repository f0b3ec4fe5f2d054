"""MediaPipe's BlazeFace short-range detector re-implemented in PyTorch, for batched GPU runs.

The network is rebuilt from the ``face_detection_short_range.tflite`` that ships inside the
installed ``mediapipe`` wheel: a small generic TFLite executor (:func:`tflite_module`) walks
the flatbuffer's operators in order and runs them with ``torch.nn.functional``, keeping 4-D
tensors in NCHW. Post-processing follows MediaPipe's ``FaceDetection`` graph (read from the
wheel): SSD anchors (4 layers, strides 8/16/16/16, fixed anchor size -> 896 anchors), box and
keypoint decoding with scale 128, ``sigmoid(clip(raw, -100, 100))`` scores and *weighted*
non-maximum suppression at IoU 0.3.

>>> det = BlazeFaceTorch(device="cuda")  # doctest: +SKIP
>>> det.detect_batch(x)  # x: (N, 3, 128, 128) in [-1, 1]  # doctest: +SKIP

On a 128x128 image :meth:`BlazeFaceTorch.detect` agrees with ``get_detector("mediapipe",
model="short")`` to a small fraction of a pixel (see ``tests/test_blazeface.py``).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from labeler._deps import require
from labeler.detect import Detection, finalize
from labeler.errors import InputError, NotFoundError

log = logging.getLogger(__name__)

SHORT_RANGE_INPUT = 128

# MediaPipe's face_detection.pbtxt + face_detection_short_range.pbtxt options.
_NUM_KEYPOINTS = 6
_NUM_COORDS = 16
_COORD_SCALE = 128.0
_SCORE_CLIP = 100.0
_NMS_IOU = 0.3

#: TFLite builtin operators the torch executor runs (float models only).
SUPPORTED_OPS = frozenset(
    {
        "DEQUANTIZE",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "RELU",
        "RELU6",
        "ADD",
        "PAD",
        "MAX_POOL_2D",
        "AVERAGE_POOL_2D",
        "RESHAPE",
        "CONCATENATION",
    }
)


def short_range_model_path() -> Path:
    """The short-range BlazeFace ``.tflite`` inside the installed ``mediapipe`` package."""
    mp = require("mediapipe", purpose="the BlazeFace model file")
    path = (
        Path(mp.__file__).resolve().parent
        / "modules/face_detection/face_detection_short_range.tflite"
    )
    if not path.is_file():
        raise NotFoundError(f"{path} is missing from the installed mediapipe package")
    return path


def ssd_anchors_short_range() -> np.ndarray:
    """``(896, 2)`` float32 anchor centres ``(x, y)`` in [0, 1] (all anchors have w = h = 1).

    SsdAnchorsCalculator with strides ``[8, 16, 16, 16]`` and 2 anchors per cell and layer
    (aspect ratio 1 plus the interpolated scale): consecutive layers of equal stride share a
    grid, so 16x16 cells x 2 anchors, then 8x8 cells x 6 anchors; row-major over cells.
    """
    strides = [8, 16, 16, 16]
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = 2 * (last - layer)
        grid = math.ceil(SHORT_RANGE_INPUT / strides[layer])
        for y in range(grid):
            for x in range(grid):
                centres.extend([((x + 0.5) / grid, (y + 0.5) / grid)] * per_cell)
        layer = last
    return np.asarray(centres, dtype=np.float32)


# --- the TFLite executor -----------------------------------------------------------------------


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` along one axis (asymmetric when odd)."""
    eff = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _parse_tflite(path: str) -> tuple[list[dict[str, Any]], dict[int, np.ndarray], dict, dict]:
    """Operators of subgraph 0 as plain dicts, constant tensors (fp16 dequantized to fp32),
    and ``{name: tensor index}`` for the graph inputs and outputs."""
    S = require("mediapipe.tasks.metadata.schema_py_generated", purpose="parsing .tflite files")
    buf = Path(path).read_bytes()
    model = S.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    op_names = _enum_names(S.BuiltinOperator)
    act_names = _enum_names(S.ActivationFunctionType)
    pad_names = _enum_names(S.Padding)
    np_types = {
        S.TensorType.FLOAT32: np.float32,
        S.TensorType.FLOAT16: np.float16,
        S.TensorType.INT32: np.int32,
        S.TensorType.INT64: np.int64,
    }

    consts: dict[int, np.ndarray] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        shapes[t] = tuple(int(s) for s in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        data = model.Buffers(tensor.Buffer()).DataAsNumpy() if tensor.Buffer() > 0 else 0
        if isinstance(data, np.ndarray) and data.size:
            if tensor.Type() not in np_types:
                raise NotImplementedError(f"constant tensor {tensor.Name()!r}: unsupported type")
            arr = np.frombuffer(data.tobytes(), dtype=np_types[tensor.Type()])
            consts[t] = arr.reshape(shapes[t]).copy()

    ops: list[dict[str, Any]] = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(t) for t in op.OutputsAsNumpy()]
        opts = op.BuiltinOptions()
        if kind not in SUPPORTED_OPS:
            raise NotImplementedError(
                f"{Path(path).name}: operator {i} ({kind}) is not supported by the torch "
                f"TFLite executor (supported: {', '.join(sorted(SUPPORTED_OPS))})"
            )
        spec: dict[str, Any] = {"index": i, "op": kind, "inputs": ins, "outputs": outs}
        if kind == "DEQUANTIZE" and ins[0] in consts:
            consts[outs[0]] = consts[ins[0]].astype(np.float32)
            continue  # folded at load time
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = (S.Conv2DOptions if kind == "CONV_2D" else S.DepthwiseConv2DOptions)()
            o.Init(opts.Bytes, opts.Pos)
            spec.update(
                stride=(o.StrideH(), o.StrideW()),
                dilation=(o.DilationHFactor(), o.DilationWFactor()),
                padding=pad_names[o.Padding()],
                act=act_names[o.FusedActivationFunction()],
            )
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            o = S.Pool2DOptions()
            o.Init(opts.Bytes, opts.Pos)
            spec.update(
                stride=(o.StrideH(), o.StrideW()),
                kernel=(o.FilterHeight(), o.FilterWidth()),
                padding=pad_names[o.Padding()],
                act=act_names[o.FusedActivationFunction()],
            )
        elif kind == "ADD":
            act = "NONE"
            if opts is not None:
                o = S.AddOptions()
                o.Init(opts.Bytes, opts.Pos)
                act = act_names[o.FusedActivationFunction()]
            spec["act"] = act
        elif kind == "RESHAPE":
            if len(ins) > 1 and ins[1] in consts:
                new_shape = [int(v) for v in consts[ins[1]].ravel()]
            elif opts is not None:
                o = S.ReshapeOptions()
                o.Init(opts.Bytes, opts.Pos)
                new_shape = [int(v) for v in o.NewShapeAsNumpy()]
            else:
                new_shape = list(shapes[outs[0]])
            spec["shape"] = new_shape
            spec["inputs"] = ins[:1]
        elif kind == "CONCATENATION":
            o = S.ConcatenationOptions()
            o.Init(opts.Bytes, opts.Pos)
            spec.update(axis=o.Axis(), act=act_names[o.FusedActivationFunction()])
        elif kind == "PAD":
            if ins[1] not in consts:
                raise NotImplementedError(f"operator {i} (PAD): paddings must be constant")
            spec["pads"] = consts[ins[1]].reshape(-1, 2).tolist()
            spec["inputs"] = ins[:1]
        ops.append(spec)

    def names(idx: np.ndarray) -> dict[str, int]:
        return {graph.Tensors(int(t)).Name().decode(): int(t) for t in idx}

    return ops, consts, names(graph.InputsAsNumpy()), names(graph.OutputsAsNumpy())


@functools.cache
def _executor_class() -> type:
    """The ``nn.Module`` class (defined lazily so that importing this module needs no torch)."""
    import torch
    import torch.nn.functional as F

    def activate(x: torch.Tensor, act: str, where: str) -> torch.Tensor:
        if act == "NONE":
            return x
        if act == "RELU":
            return F.relu(x)
        if act == "RELU6":
            return F.relu6(x)
        raise NotImplementedError(f"{where}: fused activation {act} is not supported")

    nhwc_to_nchw_axis = {0: 0, 1: 2, 2: 3, 3: 1}

    class TfliteModule(torch.nn.Module):
        """Runs subgraph 0 of a float TFLite model; ``forward(x)`` takes NHWC (as TFLite
        does) or, with ``nchw=True``, NCHW input; returns ``{output name: tensor}`` with
        TFLite (NHWC) semantics. Any batch size works."""

        def __init__(self, path: str | Path) -> None:
            super().__init__()
            ops, consts, self.input_names, self.output_names = _parse_tflite(str(path))
            self.ops = ops
            self._const_keys: dict[int, str] = {}
            # drop each activation after its last reader: peak memory of a big batch
            last_use = {t: k for k, spec in enumerate(ops) for t in spec["inputs"]}
            keep = set(self.output_names.values())
            self._free_after: list[list[int]] = [[] for _ in ops]
            for t, k in last_use.items():
                if t not in keep and t not in consts:
                    self._free_after[k].append(t)
            for spec in ops:
                kind, ins = spec["op"], spec["inputs"]
                if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                    w = consts[ins[1]]
                    if kind == "CONV_2D":  # OHWI -> OIHW
                        w = w.transpose(0, 3, 1, 2)
                    else:  # 1HW(C*m) -> (C*m)1HW
                        w = w.transpose(3, 0, 1, 2)
                    self._add_const(ins[1], w)
                    if len(ins) > 2 and ins[2] >= 0:
                        self._add_const(ins[2], consts[ins[2]])
                else:
                    for t in ins:
                        if t in consts:
                            self._add_const(t, consts[t])

        def _add_const(self, t: int, arr: np.ndarray) -> None:
            key = f"t{t}"
            self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(arr)))
            self._const_keys[t] = key

        def _value(self, env: dict[int, torch.Tensor], t: int) -> torch.Tensor:
            key = self._const_keys.get(t)
            return getattr(self, key) if key is not None else env[t]

        @staticmethod
        def _pad_same(
            x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int]
        ) -> tuple[torch.Tensor, tuple[int, int] | None]:
            """Explicit pad for asymmetric SAME; else the symmetric padding for the op."""
            ph = _same_padding(x.shape[2], kernel[0], stride[0], dil[0])
            pw = _same_padding(x.shape[3], kernel[1], stride[1], dil[1])
            if ph[0] == ph[1] and pw[0] == pw[1]:
                return x, (ph[0], pw[0])
            return F.pad(x, (pw[0], pw[1], ph[0], ph[1])), None

        def forward(self, x: torch.Tensor, *, nchw: bool = False) -> dict[str, torch.Tensor]:
            if x.dim() == 4:
                if not nchw:
                    x = x.permute(0, 3, 1, 2)
                # NHWC memory (what TFLite uses) is ~2x faster for these small convs on CPU
                x = x.contiguous(memory_format=torch.channels_last)
            env: dict[int, torch.Tensor] = {next(iter(self.input_names.values())): x}
            for spec, free in zip(self.ops, self._free_after, strict=True):
                kind, ins, out = spec["op"], spec["inputs"], spec["outputs"][0]
                where = f"operator {spec['index']} ({kind})"
                a = self._value(env, ins[0])
                if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                    w = self._value(env, ins[1])
                    b = self._value(env, ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
                    groups = a.shape[1] if kind == "DEPTHWISE_CONV_2D" else 1
                    pad: tuple[int, int] | None = (0, 0)
                    if spec["padding"] == "SAME":
                        a, pad = self._pad_same(a, w.shape[2:], spec["stride"], spec["dilation"])
                    y = F.conv2d(
                        a,
                        w,
                        b,
                        stride=spec["stride"],
                        padding=pad or 0,
                        dilation=spec["dilation"],
                        groups=groups,
                    )
                    y = activate(y, spec["act"], where)
                elif kind == "MAX_POOL_2D" or kind == "AVERAGE_POOL_2D":
                    pad = (0, 0)
                    if spec["padding"] == "SAME":
                        if kind == "AVERAGE_POOL_2D":
                            raise NotImplementedError(f"{where}: SAME padding is not supported")
                        ph = _same_padding(a.shape[2], spec["kernel"][0], spec["stride"][0])
                        pw = _same_padding(a.shape[3], spec["kernel"][1], spec["stride"][1])
                        a = F.pad(a, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
                    pool = F.max_pool2d if kind == "MAX_POOL_2D" else F.avg_pool2d
                    y = activate(pool(a, spec["kernel"], spec["stride"]), spec["act"], where)
                elif kind == "RELU":
                    y = F.relu(a)
                elif kind == "RELU6":
                    y = F.relu6(a)
                elif kind == "DEQUANTIZE":
                    y = a.float()
                elif kind == "ADD":
                    b = self._value(env, ins[1])
                    if ins[1] in self._const_keys and a.dim() == 4 and b.dim() <= 1:
                        b = b.reshape(-1, 1, 1)  # per-channel constant, NCHW
                    elif a.dim() != b.dim() and 4 in (a.dim(), b.dim()):
                        raise NotImplementedError(f"{where}: broadcast across layouts")
                    y = activate(a + b, spec["act"], where)
                elif kind == "PAD":
                    pads = spec["pads"]
                    if a.dim() == 4:
                        if pads[0] != [0, 0]:
                            raise NotImplementedError(f"{where}: padding the batch axis")
                        (t, bt), (le, r), (c0, c1) = pads[1], pads[2], pads[3]
                        y = F.pad(a, (le, r, t, bt, c0, c1))
                    else:
                        if pads[0] != [0, 0]:
                            raise NotImplementedError(f"{where}: padding the batch axis")
                        flat = [v for p in reversed(pads[1:]) for v in p]
                        y = F.pad(a, flat)
                elif kind == "RESHAPE":
                    if a.dim() == 4:
                        a = a.permute(0, 2, 3, 1)
                    y = a.reshape(a.shape[0], *spec["shape"][1:])
                    if y.dim() == 4:
                        y = y.permute(0, 3, 1, 2)
                elif kind == "CONCATENATION":
                    parts = [self._value(env, t) for t in ins]
                    axis = spec["axis"] % parts[0].dim()
                    if parts[0].dim() == 4:
                        axis = nhwc_to_nchw_axis[axis]
                    y = activate(torch.cat(parts, dim=axis), spec["act"], where)
                else:
                    raise NotImplementedError(f"{where} is not supported")
                env[out] = y
                for t in free:
                    env.pop(t, None)
            outs = {}
            for name, t in self.output_names.items():
                v = self._value(env, t)
                outs[name] = v.permute(0, 2, 3, 1) if v.dim() == 4 else v
            return outs

    return TfliteModule


def tflite_module(path: str | Path) -> Any:
    """A ``torch.nn.Module`` running the float TFLite model at ``path`` (subgraph 0)."""
    return _executor_class()(path)


# --- post-processing -----------------------------------------------------------------------------


def _iou_matrix(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(cands: np.ndarray, iou_threshold: float = _NMS_IOU) -> np.ndarray:
    """MediaPipe's WEIGHTED non-max suppression on ``(K, 17)`` rows ``[score, x0, y0, x1, y1,
    keypoints...]``: the best remaining row and every remaining row with IoU > threshold to it
    (itself included) merge into their score-weighted mean, keeping the best row's score."""
    if len(cands) <= 1:
        return np.array(cands, dtype=np.float32).reshape(-1, cands.shape[1])
    order = np.argsort(-cands[:, 0], kind="stable")
    rest = cands[order].astype(np.float64)
    out = []
    while len(rest):
        top = rest[0]
        hit = _iou_matrix(top[1:5], rest[:, 1:5]) > iou_threshold
        hit[0] = True
        cluster = rest[hit]
        weights = cluster[:, :1]
        merged = (cluster[:, 1:] * weights).sum(0) / weights.sum()
        out.append(np.concatenate([top[:1], merged]))
        rest = rest[~hit]
    return np.asarray(out, dtype=np.float32).reshape(-1, cands.shape[1])


def rows_to_detections(
    rows: np.ndarray, scale: float, offset: tuple[float, float]
) -> list[Detection]:
    """:meth:`BlazeFaceTorch.detect_batch` rows of one image -> :class:`Detection` in image
    pixels, where image pixel = normalised input coordinate * ``scale`` + ``offset``;
    landmarks are the first 4 keypoints (eyes, nose tip, mouth)."""
    dets = []
    for row in rows:
        pts = row[1:].reshape(-1, 2).astype(np.float64) * scale + offset
        (x0, y0), (x1, y1) = pts[0], pts[1]
        dets.append(Detection(float(x0), float(y0), float(x1), float(y1), float(row[0]), pts[2:6]))
    return dets


class BlazeFaceTorch:
    """BlazeFace short-range in PyTorch (CPU or CUDA), batched; not thread-safe.

    ``score_threshold`` (0..1, default 0.5) is MediaPipe's ``min_score_thresh``: candidates
    below it are dropped before the weighted NMS. (MediaPipe's legacy Python solution ignores
    its ``min_detection_confidence`` and always uses 0.5 there; ``MediaPipeDetector`` applies
    its threshold afterwards, in ``finalize``. The two agree at the default 0.5.)
    """

    name = "blazeface"

    def __init__(self, *, device: str = "cpu", score_threshold: float = 0.5) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise InputError(f"score_threshold must be in 0..1, got {score_threshold}")
        torch = require("torch", purpose="the torch BlazeFace detector")
        self.score_threshold = float(score_threshold)
        self.input_size = SHORT_RANGE_INPUT
        self.device = torch.device(device)
        self.net = tflite_module(short_range_model_path()).to(self.device).eval()
        self._anchors = torch.from_numpy(ssd_anchors_short_range()).to(self.device)
        log.debug("BlazeFaceTorch on %s", self.device)

    def _decode(self, regressors: Any, classificators: Any) -> tuple[Any, Any]:
        """Raw outputs -> ``(N, 896)`` scores, ``(N, 896, 16)`` [x0, y0, x1, y1, kx, ky...]."""
        import torch

        r = regressors / _COORD_SCALE
        anchor_xy = self._anchors  # w = h = 1 (fixed anchor size)
        centre = r[..., 0:2] + anchor_xy
        half = r[..., 2:4] / 2
        kps = r[..., 4:].reshape(*r.shape[:2], _NUM_KEYPOINTS, 2) + anchor_xy[:, None, :]
        boxes = torch.cat([centre - half, centre + half, kps.flatten(2)], dim=-1)
        scores = torch.sigmoid(classificators[..., 0].clamp(-_SCORE_CLIP, _SCORE_CLIP))
        return scores, boxes

    def _forward(self, x: Any) -> dict[str, Any]:
        import torch

        if self.device.type != "cuda":
            return self.net(x, nchw=True)
        # TF32 convolutions (PyTorch's default on CUDA) move boxes by ~0.2 px: stay in fp32.
        # No cudnn.benchmark (an embedding backbone may have switched it on): tuning each new
        # batch shape costs seconds, this small net runs fine on cuDNN's heuristics.
        cudnn = torch.backends.cudnn
        tf32, bench = cudnn.allow_tf32, cudnn.benchmark
        try:
            cudnn.allow_tf32, cudnn.benchmark = False, False
            return self.net(x, nchw=True)
        finally:
            cudnn.allow_tf32, cudnn.benchmark = tf32, bench

    def detect_batch(self, x: Any) -> list[np.ndarray]:
        """x: torch float tensor (N, 3, 128, 128) in [-1, 1] on self.device (RGB, NCHW).
        Returns per image an array (K, 17) float32: [score, x0, y0, x1, y1, kx0, ky0, ..., kx5, ky5]
        in normalized [0, 1] coordinates of the 128x128 input, rows by score descending."""
        import torch

        if x.dim() != 4 or tuple(x.shape[1:]) != (3, SHORT_RANGE_INPUT, SHORT_RANGE_INPUT):
            raise ValueError(f"expected (N, 3, 128, 128) input, got {tuple(x.shape)}")
        if len(x) == 0:
            return []
        with torch.inference_mode():
            out = self._forward(x.to(self.device, torch.float32))
            scores, boxes = self._decode(out["regressors"], out["classificators"])
            keep = (scores >= self.score_threshold) & (boxes[..., 2] >= boxes[..., 0])
            keep &= boxes[..., 3] >= boxes[..., 1]  # MediaPipe drops negative widths/heights
            rows = torch.cat([scores[..., None], boxes], dim=-1)
            keep_np = keep.cpu().numpy()
            rows_np = rows[keep].cpu().numpy()
        counts = keep_np.sum(1)
        splits = np.split(rows_np, np.cumsum(counts)[:-1])
        return [weighted_nms(c) for c in splits]

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Letterbox ``rgb`` into a float32 ``(3, 128, 128)`` array in [-1, 1] exactly as
        MediaPipe's CPU ImageToTensorCalculator does; also ``(left, top, side)``: the square
        region of the image that the input covers, so that a normalised input coordinate
        ``u`` is image pixel ``left + u * side`` (MediaPipe's DetectionProjection).

        MediaPipe pads the image to a centred square of side ``max(h, w)`` and maps its
        corners onto the corners of the tensor with ``cv::warpPerspective`` (bilinear, zero
        border): output pixel ``i`` samples the image at ``left + i * side / 128``, with no
        half-pixel shift. On a large image this is a point sampling (no smoothing) that sits
        up to half a source block off ``cv2.resize``'s, which moves boxes by several pixels.
        """
        import cv2

        h, w = rgb.shape[:2]
        n = SHORT_RANGE_INPUT
        side = float(max(h, w))
        left, top = (w - side) / 2, (h - side) / 2
        if (h, w) == (n, n):
            tensor = np.ascontiguousarray(rgb)
        else:
            # cv::boxPoints order for an unrotated rect, as in MediaPipe
            src = np.float32([[left, top + side], [left, top], [left + side, top]])
            src = np.vstack([src, np.float32([[left + side, top + side]])])
            dst = np.float32([[0, n], [0, 0], [n, 0], [n, n]])
            matrix = cv2.getPerspectiveTransform(src, dst)
            tensor = cv2.warpPerspective(
                np.ascontiguousarray(rgb),
                matrix,
                (n, n),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        x = tensor.astype(np.float32).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)
        return np.ascontiguousarray(x), (left, top, side)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detector protocol on one (H, W, 3) uint8 image: letterbox to 128 (keep aspect, pad with
        zeros i.e. -1 after normalisation, centred, like MediaPipe's FIT scale mode; sampled as
        MediaPipe does, see :meth:`preprocess`), run, map back to image pixels, landmarks = first
        4 keypoints (eyes, nose tip, mouth), then
        labeler.detect.finalize(dets, score_threshold=self.score_threshold)."""
        import torch

        x, (left, top, side) = self.preprocess(np.asarray(rgb)[..., :3])
        rows = self.detect_batch(torch.from_numpy(x)[None].to(self.device))[0]
        dets = rows_to_detections(rows, side, (left, top))
        return finalize(dets, score_threshold=self.score_threshold)
