#!/usr/bin/env bash
# The main job on the embedded default: synthetic Seq-DeepFake stand-in -> prepare -> build-graph ->
# train (a direct model and a graph model, both with ASL) -> evaluate -> report + category figure -> Grad-CAM of one
# test face. Sized to learn the task on a 2-core CPU in minutes (docs/development.md says what each
# choice costs); the same commands use CUDA when present.
set -euo pipefail
M=${MLCDF:-.venv/bin/mlcdf}
D=${DEMO_DIR:-demo}
EPOCHS=${DEMO_EPOCHS:-6}
# Clearly visible manipulations (--strength 4), drawn at 64 px and trained at 48 px: small images learn fast.
SIZE=48
# ASL with γ- = 1, not the paper's 4: 60% of the demo's (image, label) pairs are positive, and γ- = 4 (made for
# sparse labels) keeps a briefly trained model's uncertain scores above 0.5, so it predicts nearly every label.
COMMON=(--prepared "$D/prepared/facial_components" --epochs "$EPOCHS" --batch-size 32 --image-size "$SIZE" --asl --asl-gamma-neg 1 --patience 0 --quiet)
source "$(dirname "$0")/fresh_dir.sh"
fresh_dir "$D" DEMO_DIR
$M synth --out "$D/data" --subset facial_components --train 1200 --val 150 --test 200 --size 64 --strength 4 --seed 0 --quiet --preview "$D/synth_preview.png"
$M prepare --root "$D/data" --subset facial_components --out "$D/prepared"
$M build-graph --prepared "$D/prepared/facial_components" --out "$D/graphs/components-glove.npz"
$M train "${COMMON[@]}" --lr 2e-3 --model timm:resnet18 --out "$D/runs/resnet18-asl"
# The graph head's logits start large: at 2e-3 its loss rose in the second epoch, so it gets half the rate.
$M train "${COMMON[@]}" --lr 1e-3 --model ml_gcn --backbone resnet18 --graph "$D/graphs/components-glove.npz" --out "$D/runs/mlgcn-r18-asl"
for run in "$D"/runs/*; do $M evaluate --run "$run" --quiet > /dev/null; done
$M report "$D"/runs/* --out "$D/report.md" --figure "$D/figure.png"
cat "$D/report.md"
# Grad-CAM of the first test face with two stacked manipulations: two labels should light up, three not.
IMAGE=$(awk -F, 'NR > 1 && split($2, steps, "-") == 2 { print $1; exit }' "$D/prepared/facial_components/test.csv")
$M explain "$D/runs/resnet18-asl" "$D/data/$IMAGE" --out "$D/explain" > /dev/null
cat <<EOF

Demo outputs, in $D/:
  report.md                the table above (test split)
  figure.png, figure.csv   direct vs indirect (graph) models, mean ± std per metric (the paper's Figures 2 and 3)
  explain/$(basename "${IMAGE%.*}")_all.png  Grad-CAM of each label on test face $IMAGE ($(awk -F, -v f="$IMAGE" '$1 == f { print $2 }' "$D/prepared/facial_components/test.csv"))
  runs/RUN/eval/test/      each run's metrics.json, report.md, predictions.csv, precision-recall and AP plots
  synth_preview.png        examples of the synthetic manipulations
EOF
