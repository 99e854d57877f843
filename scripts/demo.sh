#!/usr/bin/env bash
# The main job on the embedded default: synthetic Seq-DeepFake stand-in -> prepare -> build-graph ->
# train (direct BCE, direct ASL, graph model) -> evaluate -> report. Small images and few epochs so that
# it runs on a CPU in minutes; the same commands use CUDA when present.
set -euo pipefail
M=${MLCDF:-.venv/bin/mlcdf}
D=${DEMO_DIR:-demo}
EPOCHS=${DEMO_EPOCHS:-4}
COMMON=(--prepared "$D/prepared/facial_components" --epochs "$EPOCHS" --batch-size 32 --image-size 64 --lr 1e-3 --patience 0 --quiet)
# Replace only a previous demo (marked by demo.sh), never a folder of the user's that DEMO_DIR happens to name.
if [ -e "$D" ] && [ ! -f "$D/.mlcdf-demo" ]; then
  echo "demo.sh: $D exists and was not written by demo.sh; set DEMO_DIR to another folder" >&2
  exit 2
fi
rm -rf "$D"
mkdir -p "$D"
touch "$D/.mlcdf-demo"
$M synth --out "$D/data" --subset facial_components --train 800 --val 150 --test 200 --size 96 --strength 2 --seed 0 --preview "$D/synth_preview.png"
$M prepare --root "$D/data" --subset facial_components --out "$D/prepared"
$M build-graph --prepared "$D/prepared/facial_components" --out "$D/graphs/components-glove.npz"
$M train "${COMMON[@]}" --model timm:resnet18 --out "$D/runs/resnet18-bce"
$M train "${COMMON[@]}" --model timm:resnet18 --asl --out "$D/runs/resnet18-asl"
$M train "${COMMON[@]}" --model ml_gcn --backbone resnet18 --graph "$D/graphs/components-glove.npz" --asl --out "$D/runs/mlgcn-r18-asl"
for run in "$D"/runs/*; do $M evaluate --run "$run" --quiet > /dev/null; done
$M report "$D"/runs/* --out "$D/report.md"
cat "$D/report.md"
