"""The obvious implementation of `labeler run --no-cluster`'s work, the honest baseline.

What a competent engineer writes in an afternoon, doing the same work as the default
features: full `cv2.imread`, MediaPipe BlazeFace on a 640 px downscale, `cv2.warpAffine` of
each face to the 256 px landmark template, the nose band, the mouth-and-chin region and the
box crop (detection box + 20 %) each resized to 224 px, timm EfficientNet-Lite0 in torch eager
(fp32, batches of 32), all in one thread. Vectors are kept in memory (no files, no resume, no
cues: less work than labeler does). Prints ``faces N seconds S``.

    python bench/naive_pipeline.py IMAGES
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def main(folder: str) -> int:
    import cv2

    from labeler.detect import get_detector
    from labeler.embeddings import get_backbone
    from labeler.faces.align import align_face, box_crop
    from labeler.faces.regions import crop_region

    t0 = time.perf_counter()
    det = get_detector("mediapipe")
    model = get_backbone("timm:efficientnet_lite0", device="cpu", runtime="torch", precision="fp32")
    batch: list[np.ndarray] = []
    vectors = []
    n = 0

    def flush() -> None:
        vectors.append(model.embed(np.stack(batch)))
        batch.clear()

    for f in sorted(Path(folder).iterdir()):
        bgr = cv2.imread(str(f))
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        s = 640 / max(h, w)
        small = cv2.resize(rgb, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        for d in det.detect(small):
            crop = align_face(rgb, d.landmarks / s)
            box = box_crop(rgb, (d.x0 / s, d.y0 / s, d.x1 / s, d.y1 / s))
            for part in (crop_region(crop, "nose"), crop_region(crop, "mouth_chin"), box):
                batch.append(cv2.resize(part, (224, 224), interpolation=cv2.INTER_AREA))
            n += 1
            if len(batch) >= 32:
                flush()
    if batch:
        flush()
    print(f"faces {n} seconds {time.perf_counter() - t0:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
