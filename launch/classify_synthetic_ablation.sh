#!/usr/bin/env bash
# WS-DAN against its own backbone trained without attention, each on whole images and on head
# crops of the synthetic pets, from scratch, with one budget: the same epochs, batch, optimiser and
# schedule (Adam, cosine decay), then each evaluated on the test split (WS-DAN raw and refined).
# WS-DAN and its backbone train side by side, one thread each. The crops are cut around the annotated heads (--crop_use_annotations), so that
# the comparison does not depend on a detector. Why these settings and what came out: docs/classify.md.
# Data first: python -m tfpets.launch --flagfile=launch/data_synthetic.flags
# Run: launch/classify_synthetic_ablation.sh [EPOCHS]
# Cost: about 30 minutes on 2 cores with 8 epochs (WS-DAN's three passes take most of it).
# Results: runs/classify_ablation/<images>_<model>/reports/{classify,evaluate}.json and a summary
# table on stdout.
set -euo pipefail
epochs=${1:-8}
out=runs/classify_ablation
crops=runs/crop_synthetic_annotated
if [[ ! -f "$crops/records/shards/manifest.json" ]]; then
  python -m tfpets.launch --stage=crop --records=tfrecords/synthetic --crop_use_annotations \
    --crop_margin=0.2 --crop_size=128 --workdir="$crops"
fi
common=(--model=wsdan --cls_wsdan_variant=paper --image_size=96 --batch_size=16
  --cls_epochs="$epochs" --cls_optimizer=adam --cls_learning_rate=0.001 --cls_schedule=cosine
  --cls_weight_decay=0 --intra_op_threads=1)
for images in whole crops; do
  records=tfrecords/synthetic
  [[ $images == crops ]] && records=$crops
  for model in wsdan backbone; do
    attention=true
    [[ $model == backbone ]] && attention=false
    run="$out/${images}_${model}"
    (python -m tfpets.launch --stage=classify --records="$records" --workdir="$run" \
      "${common[@]}" --cls_wsdan_attention="$attention" &&
      python -m tfpets.launch --stage=evaluate --classifier="$run" --records="$records" \
        --workdir="$run" --batch_size=16) &
  done
  wait
done
python - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'run':<18} {'test top-1':>10} {'raw top-1':>10} {'fit s':>7}")
for run in sorted(out.iterdir()):
  evaluation = json.loads((run / "reports" / "evaluate.json").read_text())
  summary = json.loads((run / "reports" / "classify.json").read_text())
  raw = evaluation.get("raw_top1", evaluation["top1"])
  print(f"{run.name:<18} {evaluation['top1']:>10.4f} {raw:>10.4f} {summary['fit_seconds_this_run']:>7.0f}")
PY
