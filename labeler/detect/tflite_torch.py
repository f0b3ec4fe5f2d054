"""A small TFLite-to-PyTorch executor: runs a float ``.tflite`` model with ``torch``.

:func:`parse_tflite` reads subgraph 0 of the flatbuffer (with the schema module that ships
in the ``mediapipe`` wheel) into plain operator dicts and constant arrays (fp16 weights
dequantized to fp32); :class:`TfliteModule` walks those operators in order with
``torch.nn.functional``, keeping 4-D tensors in NCHW (channels-last memory), and returns
the outputs with TFLite's NHWC semantics. Only the operators BlazeFace needs are supported
(:data:`SUPPORTED_OPS`); any other is refused by name at load time. Written by hand on
purpose: it is checked against MediaPipe's own output in ``tests/test_blazeface.py``.

Importing this module imports torch; :mod:`labeler.detect.blazeface` imports it only when
a torch detector is built, so ``labeler --help`` stays torch-free.

>>> net = TfliteModule(short_range_model_path()).eval()  # doctest: +SKIP
>>> net(x_nchw, nchw=True)["regressors"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from labeler._deps import require

torch = require("torch", purpose="the torch TFLite executor (the torch BlazeFace detector)")
F = torch.nn.functional

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


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` along one axis (asymmetric when odd)."""
    eff = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def parse_tflite(path: str) -> tuple[list[dict[str, Any]], dict[int, np.ndarray], dict, dict]:
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


def _activate(x: torch.Tensor, act: str, where: str) -> torch.Tensor:
    if act == "NONE":
        return x
    if act == "RELU":
        return F.relu(x)
    if act == "RELU6":
        return F.relu6(x)
    raise NotImplementedError(f"{where}: fused activation {act} is not supported")


_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class TfliteModule(torch.nn.Module):
    """Runs subgraph 0 of a float TFLite model; ``forward(x)`` takes NHWC (as TFLite
    does) or, with ``nchw=True``, NCHW input; returns ``{output name: tensor}`` with
    TFLite (NHWC) semantics. Any batch size works."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        ops, consts, self.input_names, self.output_names = parse_tflite(str(path))
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
        ph = same_padding(x.shape[2], kernel[0], stride[0], dil[0])
        pw = same_padding(x.shape[3], kernel[1], stride[1], dil[1])
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
                y = _activate(y, spec["act"], where)
            elif kind == "MAX_POOL_2D" or kind == "AVERAGE_POOL_2D":
                pad = (0, 0)
                if spec["padding"] == "SAME":
                    if kind == "AVERAGE_POOL_2D":
                        raise NotImplementedError(f"{where}: SAME padding is not supported")
                    ph = same_padding(a.shape[2], spec["kernel"][0], spec["stride"][0])
                    pw = same_padding(a.shape[3], spec["kernel"][1], spec["stride"][1])
                    a = F.pad(a, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
                pool = F.max_pool2d if kind == "MAX_POOL_2D" else F.avg_pool2d
                y = _activate(pool(a, spec["kernel"], spec["stride"]), spec["act"], where)
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
                y = _activate(a + b, spec["act"], where)
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
                    axis = _NHWC_TO_NCHW_AXIS[axis]
                y = _activate(torch.cat(parts, dim=axis), spec["act"], where)
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
