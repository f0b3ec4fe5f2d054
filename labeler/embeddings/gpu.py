"""CUDA helpers: batched nvJPEG decode of crops and the region cut/resize on the GPU.

Used by ``labeler embed --decode cuda`` (torch runtime on a CUDA device). Pixels differ from
the CPU path by JPEG IDCT rounding and the resize kernel (antialiased bilinear when
shrinking, bilinear when enlarging: about one grey level on average), so do not mix the two decodes within one stored set if exact repeatability
matters.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

from labeler.faces.regions import get_region

log = logging.getLogger(__name__)


def _decode_cpu(datas: Sequence[bytes]) -> list[Any]:
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for d in datas:
        with Image.open(io.BytesIO(d)) as im:
            out.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1))
    return out


def decode_crops_cuda(
    datas: Sequence[bytes], *, region: str = "face", size: int = 224, device: str = "cuda"
) -> Any:
    """JPEG bytes of aligned crops -> uint8 tensor ``(N, size, size, 3)`` on ``device``.

    Decodes with ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG, one batched call;
    ``device="cpu"`` runs the same code with libjpeg); non-JPEG inputs fall back to PIL.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=device)
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        log.debug("GPU decode failed (%s); decoding this batch on the CPU", exc)
        images = [im.to(device, non_blocking=True) for im in _decode_cpu(datas)]
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape[1:]), []).append(i)
    for (h, w), idx in groups.items():
        side = min(h, w)
        out[idx] = region_pixels(
            torch.stack([images[i][:, :side, :side] for i in idx]), region=region, size=size
        )
    return out


def region_pixels(crops: Any, *, region: str = "face", size: int = 224) -> Any:
    """Square aligned crops ``(N, 3, S, S)`` (uint8 or float 0..255, any device) -> the
    ``region`` of each resized to uint8 ``(N, size, size, 3)`` on the same device."""
    import torch
    import torch.nn.functional as F

    x0, y0, x1, y1 = get_region(region).pixels(crops.shape[-1])
    batch = crops[:, :, y0:y1, x0:x1].float()
    # antialiased bilinear is within ~0.3 grey levels of cv2.INTER_AREA when shrinking
    # ("area" is not: non-integer ratios); plain bilinear equals INTER_LINEAR when enlarging
    shrink = (y1 - y0) >= size and (x1 - x0) >= size
    resized = F.interpolate(
        batch, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
