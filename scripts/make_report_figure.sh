#!/usr/bin/env bash
# Makes docs/figures/report.png, the README's picture of an HTML report: a small test model (one epoch on the
# synthetic stand-in at 112 px, a minute on a 2-core CPU; its numbers mean nothing) on scikit-image's
# astronaut photo and on a 4-second clip of it drifting across the frame, with face finding and FFHQ
# alignment (--faces all), rendered by headless Chromium. Needs the faces and video extras and scikit-image.
set -euo pipefail
M=${MLCDF:-.venv/bin/mlcdf}
PY=${PYTHON:-.venv/bin/python}
D=${FIGURE_DIR:-build/report-figure}
source "$(dirname "$0")/fresh_dir.sh"
fresh_dir "$D" FIGURE_DIR
$M synth --out "$D/data" --subset facial_components --train 64 --val 16 --test 8 --size 112 --seed 1 --quiet
$M prepare --root "$D/data" --subset facial_components --out "$D/prepared"
$M train --prepared "$D/prepared/facial_components" --model timm:test_resnet --out "$D/run" --epochs 1 --batch-size 16 \
  --image-size 112 --patience 0 --quiet
mkdir -p "$D/inputs"
"$PY" - "$D/inputs" <<'PYTHON'
import sys

import av
import numpy as np
from PIL import Image
from skimage.data import astronaut

folder = sys.argv[1]
photo = Image.fromarray(astronaut())
photo.save(f"{folder}/astronaut.png")
with av.open(f"{folder}/interview.mp4", "w") as container:
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 384, 384, "yuv420p"
    for i in range(40):
        window = photo.crop((40 + i, 20 + i // 2, 440 + i, 420 + i // 2)).resize((384, 384))
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(window), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
PYTHON
$M predict "$D/run" "$D/inputs/astronaut.png" "$D/inputs/interview.mp4" --faces all --frames 12 --html "$D/report.html" --quiet
mkdir -p docs/figures
chromium --headless --disable-gpu --no-sandbox --hide-scrollbars --window-size=1240,1040 \
  --screenshot="$PWD/docs/figures/report.png" "file://$(realpath "$D/report.html")" 2>/dev/null
echo "docs/figures/report.png: $D/report.html"
