#!/usr/bin/env bash
# Makes docs/robustness.png and the robustness numbers of docs/robustness.md: two ResNet-18 runs on a small synthetic
# stand-in (256 px images, 400/100/100), without and with --augment-perturb 0.5, each evaluated under all
# 40 perturbation conditions. About 20 min of training and 13 min of evaluation per run on the busy 2-core CPU.
set -euo pipefail
M=${MLCDF:-.venv/bin/mlcdf}
D=${FIGURE_DIR:-build/robustness-figure}
source "$(dirname "$0")/fresh_dir.sh"
fresh_dir "$D" FIGURE_DIR
$M synth --out "$D/data" --subset facial_components --train 400 --val 100 --test 100 --size 256 --strength 2 --seed 0 --quiet
$M prepare --root "$D/data" --subset facial_components --out "$D/prepared"
COMMON=(--prepared "$D/prepared/facial_components" --epochs 4 --batch-size 32 --image-size 64 --lr 1e-3 --patience 0 --quiet --model timm:resnet18)
$M train "${COMMON[@]}" --out "$D/runs/r18"
$M train "${COMMON[@]}" --augment-perturb 0.5 --out "$D/runs/r18-augp05"
for run in "$D/runs/r18" "$D/runs/r18-augp05"; do $M evaluate --run "$run" --perturb all --quiet > /dev/null; done
$M report "$D/runs/r18" "$D/runs/r18-augp05" --robustness
cp "$D/runs/r18/eval/test/robustness.png" docs/robustness.png
