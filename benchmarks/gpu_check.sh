#!/usr/bin/env bash
# The GPU check (issue 18, "the compute path"): one command that proves the GPU path end to end on one
# GPU machine (sized for an H100/H200 with 16 cores: at most 8 minutes) and says how far it is from the
# device's compute limit.
#
#   bash benchmarks/gpu_check.sh             # GPU: vit_b_16, 224 px ImageNet-shaped data, bf16, channels_last
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on CPU: cnn, 32 px, 3 classes, 1 epoch (~1 min)
#
# Steps: (1) make Ray importable (wheels from .whl/ on a machine without it); (2) `unlearn prepare`
# synthetic-imagenet shards into $WORK (default /tmp/gpu_check), reused when already there; (3) the compute
# limit: benchmarks/compute_limit.py times pure training steps and evaluation forwards on a batch already
# on the device; (4) a randomly initialised original checkpoint (nothing can be downloaded); (5) LoTUS
# through Ray Data -> Ray Train (`unlearn run`, limited:5/45, stream mode); (6) benchmarks/gpu_report.py
# prints seconds and images/s per phase against the compute limit, LoTUS's minutes extrapolated to
# ImageNet-1k limited access, and the goals with PASS/MISS. Exit status: 0 when every step ran (a MISS is
# a finding, not a failure), 2 on a usage or set-up error, the failing step's status otherwise.
# Environment: PYTHON (default python3), WORK (default /tmp/gpu_check), RUN_TIMEOUT (seconds for step 5,
# default 360).
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$arg' (only --dry-run)" >&2; usage >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu_check}
# Both may be given relative to the caller's folder: made absolute before moving to the repository root.
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."    # the repository root: `python -m jobs.cli` imports from here
ROOT=$PWD
CORES=$(nproc 2>/dev/null || echo 2)
started=$SECONDS
step() { echo; echo "== [$((SECONDS - started)) s] $* =="; }

# ---- 1. Ray importable -----------------------------------------------------------------------------
# The GPU machine has torch/torchvision/timm/pyarrow/pandas but no Ray and no internet: Ray comes from the
# wheels that ../shared/tools/device-wheels builds into .whl/ (carried with the working tree).
# One interpreter start answers everything the script asks of this Python (each start imports torch and Ray,
# seconds on a small machine): does Ray import (exit 3 if not), is there a GPU, does `unlearn run` take
# --cache-mb (being added: the per-worker budget of the decode-once cache).
probe() {
    "$PY" - <<'PY'
import sys
try:
    import ray
except ImportError:
    sys.exit(3)
import torch
from jobs.unlearn import parser

print(f"Ray {ray.__version__}, torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)", file=sys.stderr)
print(int(torch.cuda.is_available()), int("--cache-mb" in parser().format_help()))
PY
}
step "1/6 Ray"
rc=0; info=$(probe) || rc=$?
if [ "$rc" = 3 ] && [ -d /tmp/site/ray ]; then     # a second run on this machine: the wheels are unpacked
    export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    rc=0; info=$(probe) || rc=$?
fi
if [ "$rc" = 3 ]; then
    if [ ! -d .whl ] && [ -x ../shared/tools/device-wheels ]; then
        echo "Ray: building .whl/ with ../shared/tools/device-wheels"
        ../shared/tools/device-wheels
    fi
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "error: '$PY' cannot import ray and there are no wheels in $ROOT/.whl/ (build them with" \
             "../shared/tools/device-wheels on a machine with internet, or install the project)" >&2
        exit 2
    fi
    echo "Ray: installing .whl/*.whl into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    rc=0; info=$(probe) || rc=$?
    [ "$rc" != 3 ] || { echo "error: ray still does not import after installing .whl/ into /tmp/site" >&2; exit 2; }
fi
if [ "$rc" != 0 ]; then
    echo "error: '$PY' cannot import the project (torch, jobs.unlearn): see the traceback above" >&2
    exit 2
fi
read -r HAS_CUDA HAS_CACHE_MB <<<"$info"
# A local Ray on this machine: never attach to a cluster named in the caller's environment (the data and the
# original live in $WORK, which a cluster's nodes cannot read), and no usage report (no internet).
unset RAY_ADDRESS
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}

# ---- the two configurations ------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    MODE="dry run on CPU"
    MODEL=cnn; SIZE=32; CLASSES=3; TRAIN=10; VAL=4; TEST=4; FORGET=limited:2/8; EPOCHS=1
    LIMIT_FLAGS=(--device cpu --batch-size 32 --steps 3 --warmup 1)
    RUN_FLAGS=(--workers 1 --cpus-per-worker 1 --floor-draws 20)
    CACHE_MB=64
    LOTUS_SETTINGS=()
else
    MODE="GPU"
    if [ "$HAS_CUDA" != 1 ]; then
        echo "error: torch sees no CUDA device; on a machine without a GPU run 'bash $0 --dry-run'" >&2
        exit 2
    fi
    # 100 classes x 60 train images: limited:5/45 takes 50 a class; 5,000 forget+retain, 1/10 of ImageNet-1k's.
    MODEL=vit_b_16; SIZE=224; CLASSES=100; TRAIN=60; VAL=10; TEST=10; FORGET=limited:5/45; EPOCHS=3
    # batch 128 = LoTUS's batch; eval batch 256 = the evaluation's (compute_limit.py's default)
    LIMIT_FLAGS=(--device cuda --amp bf16 --channels-last --batch-size 128 --steps 30 --warmup 10)
    # The Train worker feeds the GPU and needs few CPU threads; decoding JPEGs is the CPU work, done by Ray
    # Data's read tasks, which get the logical CPUs the worker does not claim (all but two here).
    CPUS_PER_WORKER=2
    RUN_FLAGS=(--gpus --workers 1 --cpus-per-worker "$CPUS_PER_WORKER" --channels-last)
    CACHE_MB=16384
    # the paper's ViT settings, as configs/imagenet-nightly.yaml runs them
    LOTUS_SETTINGS=(--set lotus.amp=bf16 --set lotus.lr=1e-6)
fi
echo "GPU check ($MODE): $MODEL at $SIZE px, synthetic-imagenet $CLASSES classes x $TRAIN train images," \
     "$FORGET, LoTUS $EPOCHS epoch(s); $CORES cores; work folder $WORK"

# ---- 2. data ----------------------------------------------------------------------------------------
# The folder is named by its settings: a rerun with the same settings reuses it, other settings get their
# own (prepare refuses a finished dataset of other settings), and a stopped conversion resumes.
DATA="$WORK/data-synthetic-imagenet-${CLASSES}x${TRAIN}-${VAL}-${TEST}-${SIZE}"
step "2/6 data: $DATA"
if [ -f "$DATA/_meta.json" ]; then
    echo "prepared already: reusing it"
else
    "$PY" -m jobs.cli prepare --source synthetic-imagenet --classes "$CLASSES" --train-per-class "$TRAIN" \
        --val-per-class "$VAL" --test-per-class "$TEST" --image-size "$SIZE" --shard-mb 64 --procs "$CORES" \
        --out "$DATA"
fi

# ---- 3. compute limit -------------------------------------------------------------------------------
LIMIT="$WORK/compute-limit-$MODEL-$SIZE-$CLASSES.json"
step "3/6 compute limit"
"$PY" -m benchmarks.compute_limit --model "$MODEL" --image-size "$SIZE" --num-classes "$CLASSES" \
    "${LIMIT_FLAGS[@]}" --json "$LIMIT"

# ---- 4. original --------------------------------------------------------------------------------------
ORIGINAL="$WORK/original-$MODEL-$SIZE-$CLASSES.pt"
step "4/6 original: $ORIGINAL"
if [ -f "$ORIGINAL" ]; then
    echo "written already: reusing it"
else
    "$PY" -m benchmarks.gpu_report original --data "$DATA" --model "$MODEL" --out "$ORIGINAL.tmp"
    mv "$ORIGINAL.tmp" "$ORIGINAL"    # only a complete checkpoint is ever reused
fi

# ---- 5. LoTUS through Ray Data -> Ray Train ---------------------------------------------------------
# A fresh --out each time: `unlearn run` reports an identical finished run as complete instead of rerunning it.
OUT="$WORK/runs/$(date -u +%Y%m%dT%H%M%SZ)-$$"
step "5/6 unlearn run (LoTUS): $OUT"
CACHE_FLAGS=()
if [ "$HAS_CACHE_MB" = 1 ]; then
    CACHE_FLAGS=(--cache-mb "$CACHE_MB")
else
    echo "(this version of unlearn run has no --cache-mb: running without it)"
fi
# Bounded: a run that cannot start (a worker waiting for a GPU Ray does not see) would otherwise hold the
# machine until its lease ends. SIGINT first, so the job stops Ray as on Ctrl-C.
RUN_TIMEOUT=${RUN_TIMEOUT:-360}
rc=0
timeout --signal=INT --kill-after=30 "$RUN_TIMEOUT" \
    "$PY" -m jobs.cli run --data "$DATA" --original "$ORIGINAL" --method lotus --forget "$FORGET" \
    "${RUN_FLAGS[@]}" --set "lotus.epochs=$EPOCHS" ${LOTUS_SETTINGS[@]+"${LOTUS_SETTINGS[@]}"} \
    --data-mode stream ${CACHE_FLAGS[@]+"${CACHE_FLAGS[@]}"} --out "$OUT" || rc=$?
if [ "$rc" != 0 ]; then
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "error: unlearn run did not finish within RUN_TIMEOUT=$RUN_TIMEOUT s (see its output above)" >&2
    else
        echo "error: unlearn run failed (exit $rc, see its output above)" >&2
    fi
    exit "$rc"
fi

# ---- 6. report -----------------------------------------------------------------------------------------
step "6/6 report"
"$PY" -m benchmarks.gpu_report report --run "$OUT" --limit "$LIMIT" --note "$MODE" --json "$OUT/gpu_check.json"
echo
echo "GPU check ($MODE) done in $((SECONDS - started)) s; record, summary (gpu_check.json) and model under $OUT"
