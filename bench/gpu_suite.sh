#!/usr/bin/env bash
# One prepared run for a GPU benchmark host (one H200, 16 cores, short windows): at most 8 minutes.
#
#   OUT=/path/to/empty bash bench/gpu_suite.sh          # on the GPU host (reads .carry/eurosat-rgb)
#   OUT=/tmp/suite bash bench/gpu_suite.sh --dry        # CPU rehearsal, tiny sizes, same stages (or GEOSSL_SUITE_DRY=1)
#
# Stages, each its own process under `timeout`, so one hang cannot eat the window:
#   1. env      -> OUT/env.json: python/torch/timm/lightning, GPU, which optional geo packages import
#   2. step_*   -> OUT/gpu_step.json: bench/gpu_step.py, ViT-S/16 2x224+8x96 batch 128 eager and compiled,
#                  ViT-S/8 2x64+6x32 batch 256 eager (the quality recipe's shape)
#   3. size, pretrain, probe -> OUT/quality.json: configs/gpu_suite.yaml pretrained on the carried EuroSAT
#                  subset, then `geossl probe` (encoder + band-statistics and random-init baselines, test split)
#   4. finetune -> OUT/quality.json "finetune": `geossl finetune` of that encoder (configs/finetune_gpu.yaml),
#                  test top-1 of the fine-tuned model, in what the window has left (FINETUNE_S)
#   5. the last stdout line: one JSON object summarising the suite (also OUT/summary.json)
# Logs, the run's summary/config/metrics and the probe's metrics.json go to OUT/logs.tar.gz: the device
# tool returns at most 8 files from OUT, so OUT holds 5 and no folder.
#
# Sizing the quality run: measured, not guessed. `size` times 30 real steps of the recipe (real loader,
# bf16, same Trainer; ~20 s) and sets optim.epochs (+ warm-ups as fractions of it) so that the WHOLE cosine
# schedule ends inside the training time left (wanted 300 s, less when the step benchmark ran long).
# trainer.max_minutes alone would cut the schedule mid-way when a guessed epoch count is off, leaving the
# learning rate high and the teacher momentum short of 1: the figure would measure the cut, not the recipe.
# max_minutes stays as a cap (1.2x the plan) so a misestimate cannot overrun the window.
# No torch.compile in the quality run: its ~1 minute warm-up would be a fifth of the training time.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
DRY=${GEOSSL_SUITE_DRY:-0}
[[ "${1:-}" == "--dry" ]] && DRY=1
: "${OUT:?set OUT to an empty folder for the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/geossl-suite.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS/artifacts"
STAGES=$LOGS/stages.jsonl
: >"$STAGES"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CONFIG=configs/gpu_suite.yaml

if [[ $DRY == 1 ]]; then
    MODE=dry
    BUDGET=${GEOSSL_SUITE_BUDGET_S:-600}     # not binding: dry stages take seconds
    T_ENV=120 T_STEP=120 T_COMPILE=120 T_SIZE=180 T_PROBE=180
    TRAIN_TARGET=8 PROBE_RESERVE=0 FINETUNE_S=120
    FINETUNE_EXTRA=(trainer.accelerator=cpu trainer.num_workers=0 optim.epochs=1 optim.warmup_epochs=0.2
                    optim.batch_size=16)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    STEP_EXTRA=(--quick)                       # gpu_step's tiny CPU model, same flags otherwise
    SIZE_EXTRA=(--steps 6 --skip 2 --min-s 4 --startup-s 0)
    # A 1-block 48-wide ViT/8 and a small head on CPU: every code path of the recipe in seconds.
    RECIPE=(trainer.accelerator=cpu trainer.require_gpu=false trainer.precision=32-true data.num_workers=0
            data.batch_size=16 "model.extra={depth: 1, embed_dim: 48, num_heads: 2}" head.out_dim=64
            head.hidden_dim=64 head.bottleneck_dim=32 augment.n_local=2)
    PROBE_EXTRA=(--device cpu --workers 0 --batch-size 64 --max-iter 30)
else
    MODE=gpu
    BUDGET=${GEOSSL_SUITE_BUDGET_S:-480}     # 8 minutes, start to last line
    T_ENV=90 T_STEP=100 T_COMPILE=180 T_SIZE=120 T_PROBE=150
    TRAIN_TARGET=210 PROBE_RESERVE=90          # probe ~50 s on the H200 estimate, plus JSON and packing
    FINETUNE_S=120                             # the fine-tune stage's share, kept out of the pretraining's
    FINETUNE_EXTRA=()
    STEP_EXTRA=(--steps 20 --warmup 5 --probe 5)
    SIZE_EXTRA=(--steps 40 --skip 10)
    RECIPE=()
    PROBE_EXTRA=(--device cuda --workers 8 --batch-size 512)
fi

say() { echo "[gpu_suite $MODE ${SECONDS}s] $*" >&2; }

pack() {  # logs and artefacts -> OUT/logs.tar.gz (atomically: a killed suite still leaves the last good one)
    tar -czf "$WORK/logs.tar.gz" -C "$WORK" logs 2>/dev/null && mv -f "$WORK/logs.tar.gz" "$OUT/logs.tar.gz"
}

stage() {  # stage NAME TIMEOUT_S CMD...: stdout -> logs/NAME.out, stderr -> logs/NAME.log, a row in stages.jsonl
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    say "$name (limit ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log"
    rc=$?
    printf '{"stage":"%s","rc":%d,"seconds":%d,"timeout_s":%d}\n' "$name" "$rc" $((SECONDS - t0)) "$limit" >>"$STAGES"
    if [[ $rc == 0 ]]; then
        grep -v '^{' "$LOGS/$name.out" | grep -v '^geossl-metric' | tail -n 4 >&2
    else
        say "$name FAILED rc=$rc (124/137: timed out); last lines of its log:"
        tail -n 15 "$LOGS/$name.log" >&2
    fi
    pack
    return $rc
}

left() { echo $((BUDGET - SECONDS)); }
clamp() { local v=$1 lo=$2 hi=$3; ((v > hi)) && v=$hi; ((v < lo)) && v=$lo; echo "$v"; }  # the floor wins

finish() {
    "$PYTHON" bench/gpu_suite.py summary --out-dir "$OUT" --stages "$STAGES" --mode "$MODE" --wall-s "$SECONDS" \
        2>>"$LOGS/summary.log"
    pack
    rm -rf "$WORK"
}

# --- 0. carried wheels (only if someone carried .carry/wheels: the host image has what we need) ----------
if compgen -G ".carry/wheels/*.whl" >/dev/null; then
    stage wheels 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
        .carry/wheels/*.whl && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

# --- 1. environment ----------------------------------------------------------------------------------
ENV_FLAGS=()
[[ $MODE == gpu ]] && ENV_FLAGS=(--require-cuda)
stage env "$T_ENV" "$PYTHON" bench/gpu_suite.py env --out "$OUT/env.json" "${ENV_FLAGS[@]}"
if [[ $(tail -n 1 "$STAGES") == *'"rc":3,'* ]]; then
    say "no GPU: stopping (run with --dry on a CPU machine)"
    finish
    exit 3
fi

# --- 2. step benchmark -------------------------------------------------------------------------------
stage step_vits16_eager "$T_STEP" "$PYTHON" bench/gpu_step.py --config vits16_224 --batch-sizes 128 --compile 0 \
    "${STEP_EXTRA[@]}"
stage step_vits16_compiled "$T_COMPILE" "$PYTHON" bench/gpu_step.py --config vits16_224 --batch-sizes 128 --compile 1 \
    "${STEP_EXTRA[@]}"
stage step_vits8_eager "$T_STEP" "$PYTHON" bench/gpu_step.py --config vits8_64 --batch-sizes 256 --n-local 6 \
    --compile 0 "${STEP_EXTRA[@]}"
"$PYTHON" bench/gpu_suite.py merge-step --out "$OUT/gpu_step.json" --stages "$STAGES" \
    "step_vits16_eager=$LOGS/step_vits16_eager.out" "step_vits16_compiled=$LOGS/step_vits16_compiled.out" \
    "step_vits8_eager=$LOGS/step_vits8_eager.out" >&2

# --- 3. quality: size, pretrain, probe ---------------------------------------------------------------
DATA=${GEOSSL_DATA:-}
if [[ -z $DATA && -f .carry/eurosat-rgb/splits.csv ]]; then DATA=$REPO/.carry; fi
if [[ -z $DATA && $MODE == dry ]]; then DATA=$("$PYTHON" -c 'from geossl.settings import data_root; print(data_root())'); fi
export GEOSSL_DATA=$DATA
if [[ -z $DATA || ! -f $DATA/eurosat-rgb/splits.csv ]]; then
    say "no EuroSAT data at '${DATA}': run bench/prepare_gpu_carry.py here and carry .carry/eurosat-rgb"
    printf '{"stage":"size","rc":2,"seconds":0,"timeout_s":0}\n' >>"$STAGES"
else
    PROBE_SPLITS=()
    if [[ $MODE == dry ]]; then
        "$PYTHON" bench/gpu_suite.py dry-splits --data "$DATA/eurosat-rgb" --out "$WORK/dry_splits.csv" >&2
        PROBE_SPLITS=(--splits "$WORK/dry_splits.csv")
    fi
    AVAILABLE=$(( $(left) - PROBE_RESERVE - FINETUNE_S ))
    if stage size "$(clamp "$AVAILABLE" 60 "$T_SIZE")" "$PYTHON" bench/gpu_suite.py size --config "$CONFIG" \
        --out "$WORK/sizing.json" --overrides-out "$WORK/overrides.txt" --target-s "$TRAIN_TARGET" \
        --available-s "$AVAILABLE" "${SIZE_EXTRA[@]}" -- "${RECIPE[@]}"; then
        mapfile -t SIZED <"$WORK/overrides.txt"
        cp "$WORK/sizing.json" "$LOGS/artifacts/"
        PLANNED=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["timeout_s"])' "$WORK/sizing.json")
        LIMIT=$PLANNED
        [[ $MODE == gpu ]] && LIMIT=$(clamp "$PLANNED" 60 $(( $(left) - 45 )))
        stage pretrain "$LIMIT" "$PYTHON" -m geossl.cli pretrain --config "$CONFIG" --run-dir "$WORK/run" \
            --resume never "${RECIPE[@]}" "${SIZED[@]}"
        for f in summary.json config.yaml stats.json curves.png logs/csv/metrics.csv; do
            [[ -f $WORK/run/$f ]] && cp "$WORK/run/$f" "$LOGS/artifacts/run_$(basename "$f")"
        done
        if [[ -f $WORK/run/encoder/geossl.json ]]; then
            LIMIT=$T_PROBE
            [[ $MODE == gpu ]] && LIMIT=$(clamp $(( $(left) + 40 )) 60 "$T_PROBE")
            stage probe "$LIMIT" "$PYTHON" -m geossl.cli probe --encoder "$WORK/run/encoder" \
                --data "$DATA/eurosat-rgb" --out "$WORK/probe" --cache-dir "$WORK/probe_cache" \
                "${PROBE_SPLITS[@]}" "${PROBE_EXTRA[@]}"
            for f in metrics.json confusion.csv confusion.png; do
                [[ -f $WORK/probe/$f ]] && cp "$WORK/probe/$f" "$LOGS/artifacts/probe_$f"
            done
            LIMIT=$FINETUNE_S
            [[ $MODE == gpu ]] && LIMIT=$(clamp $(( $(left) - 20 )) 30 "$FINETUNE_S")
            stage finetune "$LIMIT" "$PYTHON" -m geossl.cli finetune --encoder "$WORK/run/encoder" \
                --data "$DATA/eurosat-rgb" --out "$WORK/finetune" --baselines none --config configs/finetune_gpu.yaml \
                "${PROBE_SPLITS[@]}" "${FINETUNE_EXTRA[@]}"
            for f in metrics.json confusion.png curves.png; do
                [[ -f $WORK/finetune/$f ]] && cp "$WORK/finetune/$f" "$LOGS/artifacts/finetune_$f"
            done
        fi
    fi
fi
"$PYTHON" bench/gpu_suite.py quality --work "$WORK" --out "$OUT/quality.json" --env "$OUT/env.json" \
    --stages "$STAGES" --config "$CONFIG" --data "$DATA" --mode "$MODE" >&2

# --- 4. summary: the last stdout line ----------------------------------------------------------------
finish
