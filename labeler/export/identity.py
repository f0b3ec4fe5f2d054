"""dlib's ResNet face descriptor, run by onnxruntime instead of dlib's own CPU code.

The network and its weights are dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (shipped
by face-recognition-models), read from that file as it is: the same model, the same
descriptors (4.5e-07 at most from ``dlib.face_recognition_model_v1``'s on real chips; the
test holds them under 1e-4), 15.9x less CPU a chip (bench/results/identity_speed.md): dlib's
wheel computes its convolutions without BLAS.

The file is dlib's serialization of ``anet_type`` from dlib's ``dnn_face_recognition_ex.cpp``
(a ResNet-29 on 150 px chips: 7x7/2 convolution, 3x3/2 max pool, residual levels of 32, 64,
128, 256 and 256 filters, global average pool, a 128-d linear layer without bias). Its layers
are written input first; each ``con_``/``affine_``/``fc_`` layer is its name string followed
by a tensor (dlib's ``serialize(tensor)``: version 2, four sizes, raw little-endian float32)
and its settings. Only those tensors and the convolutions' settings are read; the layout of
the rest is the published architecture, and a file that does not match it is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from labeler.errors import InputError

log = logging.getLogger(__name__)

#: dlib's input_rgb_image mean (R, G, B); inputs are (pixel - mean) / 256
DLIB_MEAN = np.array([122.782, 117.001, 104.298], dtype=np.float32)
#: residual units in forward order: (filters, first unit downsamples)
UNITS: tuple[tuple[int, bool], ...] = (
    *((32, False),) * 3,
    (64, True),
    *((64, False),) * 3,
    (128, True),
    *((128, False),) * 2,
    (256, True),
    *((256, False),) * 2,
    (256, True),
)


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray  # (out, in, kh, kw)
    bias: np.ndarray  # (out,)
    stride: int
    padding: int


@dataclass(frozen=True)
class DlibResNet:
    """The weights of dlib's face-recognition ResNet, in forward order."""

    convs: tuple[Conv, ...]
    affines: tuple[tuple[np.ndarray, np.ndarray], ...]  # (gamma, beta) after each conv
    fc: np.ndarray  # (256, 128): descriptor = pooled @ fc


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> InputError:
        return InputError(
            f"{self.path} is not dlib's face-recognition ResNet ({what} at byte {self.pos}); "
            "reinstall it: pip install --force-reinstall face-recognition-models==0.3.0"
        )

    def integer(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise self.fail("tensor version is not 2")
        n, k, nr, nc = (self.integer() for _ in range(4))
        count = n * k * nr * nc
        if self.pos + 4 * count > len(self.data):
            raise self.fail("tensor runs past the end of the file")
        out = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return out.astype(np.float32)

    def seek(self, name: bytes) -> bool:
        """Move past the next serialized string ``name``; False when there is none."""
        key = bytes([0x01, len(name)]) + name
        at = self.data.find(key, self.pos)
        if at < 0:
            return False
        self.pos = at + len(key)
        return True


def read_dlib_resnet(path: str | Path) -> DlibResNet:
    """Read the convolution, affine and final linear weights of
    ``dlib_face_recognition_resnet_model_v1.dat``."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    convs: list[Conv] = []
    affines: list[tuple[np.ndarray, np.ndarray]] = []
    c_in = 3
    while True:
        if not reader.seek(b"con_4"):
            break
        params = reader.tensor()
        filters, kh, kw, stride, _, padding, _ = (reader.integer() for _ in range(7))
        size = filters * c_in * kh * kw
        if params.size != size + filters:
            raise reader.fail(f"convolution {len(convs)} has {params.size} parameters")
        convs.append(
            Conv(params[:size].reshape(filters, c_in, kh, kw), params[size:], stride, padding)
        )
        if not reader.seek(b"affine_"):  # each convolution's affine comes next in the file
            raise reader.fail(f"no affine layer after convolution {len(convs)}")
        gb = reader.tensor()
        if gb.size != 2 * filters:
            raise reader.fail(f"affine {len(affines)} has {gb.size} parameters")
        affines.append((gb[:filters], gb[filters:]))
        c_in = filters
    if not reader.seek(b"fc_2"):
        raise reader.fail("no final linear layer")
    outputs, inputs = reader.integer(), reader.integer()
    fc = reader.tensor()
    if (inputs, outputs) != (256, 128) or fc.size != inputs * outputs:
        raise reader.fail(f"final layer is {inputs}x{outputs}")
    expected = 1 + 2 * len(UNITS)
    if len(convs) != expected:
        raise reader.fail(f"{len(convs)} convolutions, expected {expected}")
    return DlibResNet(tuple(convs), tuple(affines), fc.reshape(inputs, outputs))


def torch_module(net: DlibResNet) -> object:
    """The network as a torch module: uint8-valued float chips (N, 3, 150, 150), RGB -> (N, 128)."""
    import torch
    import torch.nn.functional as F

    def conv(c: Conv) -> torch.nn.Conv2d:
        m = torch.nn.Conv2d(
            c.weight.shape[1], c.weight.shape[0], c.weight.shape[2:], c.stride, c.padding
        )
        m.weight.data = torch.from_numpy(c.weight.copy())
        m.bias.data = torch.from_numpy(c.bias.copy())
        return m

    def fold(c: Conv, gamma: np.ndarray, beta: np.ndarray) -> torch.nn.Conv2d:
        """affine(conv(x)) = gamma * (w x + b) + beta: one convolution."""
        return conv(
            Conv(c.weight * gamma[:, None, None, None], c.bias * gamma + beta, c.stride, c.padding)
        )

    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """dlib's add_prev: the larger shape, the smaller operand zero-padded."""
        c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

        def pad(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

        return pad(a) + pad(b)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [fold(c, g, b) for c, (g, b) in zip(net.convs, net.affines, strict=True)]
            self.stem = layers[0]
            self.units = torch.nn.ModuleList(
                torch.nn.ModuleList(layers[1 + 2 * i : 3 + 2 * i]) for i in range(len(UNITS))
            )
            self.down = [d for _, d in UNITS]
            self.register_buffer("mean", torch.from_numpy(DLIB_MEAN).view(1, 3, 1, 1))
            self.fc = torch.nn.Linear(256, 128, bias=False)
            self.fc.weight.data = torch.from_numpy(np.ascontiguousarray(net.fc.T))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - self.mean) / 256.0
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
            for (first, second), down in zip(self.units, self.down, strict=True):
                y = second(F.relu(first(x)))
                x = F.relu(add(y, F.avg_pool2d(x, 2, 2) if down else x))
            return self.fc(x.mean(dim=(2, 3)))

    return Net().eval()


def _model_dir() -> Path:
    import importlib.util

    from labeler._deps import MissingDependency

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "face-recognition-models is needed for person grouping by identity but is not "
            "installed; run: pip install face-recognition-models==0.3.0 "
            "(or pass --persons embedding / --person-pattern / --person-csv)"
        )
    # the package's __init__ needs pkg_resources: locate the files without importing it
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_path() -> Path:
    """dlib's face-recognition ResNet as face-recognition-models installs it."""
    return _model_dir() / "dlib_face_recognition_resnet_model_v1.dat"


@lru_cache(maxsize=1)
def _session(threads: int) -> object:
    """An onnxruntime session of the network (exported from the torch module in memory)."""
    import io
    import warnings

    import onnxruntime as ort
    import torch

    module = torch_module(read_dlib_resnet(model_path()))
    buf = io.BytesIO()
    # the tracer's note that the chip size is fixed in the graph: it is (150 px), batch is not
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, 150, 150),),
            buf,
            input_names=["chips"],
            output_names=["descriptor"],
            dynamic_axes={"chips": {0: "n"}, "descriptor": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def describe(chips: np.ndarray, *, workers: int = 0, batch: int = 16) -> np.ndarray:
    """dlib ResNet descriptors of 150 px chips (N, 150, 150, 3) uint8 RGB -> (N, 128) float32,
    the numbers ``dlib.face_recognition_model_v1.compute_face_descriptor`` gives.

    ``workers`` threads (default: the cores, at most 4) each run whole batches on one
    onnxruntime thread: the small feature maps of a 150 px chip keep one core busy but not
    two (bench/results/identity_speed.md: 2 workers x 1 thread beat 1 worker x 2 threads).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    session = _session(1)
    chips = np.asarray(chips)
    out = np.empty((len(chips), 128), dtype=np.float32)
    starts = range(0, len(chips), batch)

    def run(start: int) -> None:
        x = chips[start : start + batch].transpose(0, 3, 1, 2).astype(np.float32)
        out[start : start + len(x)] = session.run(None, {"chips": x})[0]  # type: ignore[attr-defined]

    workers = workers or min(4, os.cpu_count() or 1)
    if workers == 1 or len(starts) == 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return out
