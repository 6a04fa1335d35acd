#!/usr/bin/env bash
# Train latentda on DAPPER's QG model (dapper.mods.QG.sakov2008, docs/qg-benchmark.md) with
# the commands a user would run: simulate → train-ae → encode → train-ldm. One latentda time step is one
# analysis cycle of the benchmark (dtout = 5). Needs DAPPER's Fortran module: `make dapper` (run first here).
# The pipeline lands in runs/ldm-qg/pipeline, for tools/bench_dapper_qg.py --pipeline.
#
# Default: 512 trajectories × 64 states (32 768 states), the data of the benchmark's current rows (docs/qg-benchmark.md
# "Where the training noise levels go"; those were simulated as seeds 0 and 1 of 256 trajectories each, here one
# seed of 512: the same law). Measured on 2 CPU cores: simulate ≈ 10.5 min (512 × (32 + 64) steps, 0.024 s per
# step, WORKERS processes, default all cores), train-ae 11.7 min, encode 4.3 min, train-ldm ≈ 75 min (6000
# steps, window 16, one core beside another job; 43 min with the earlier window of 8). TRAJECTORIES=128 gives
# the first, smaller pipeline (1/4 of the data). Extra arguments go to both trainings
# (e.g. --resume, or --set training.steps=5 for a smoke test). SHIP=1 copies the pipeline to pretrained/qg (the
# shipped one, which tests/test_pretrained_qg.py checks against tests/data/qg_truth.safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
LATENTDA=${LATENTDA:-.venv/bin/latentda}
TRAJECTORIES=${TRAJECTORIES:-512}
WORKERS=${WORKERS:-$(nproc)}
STEPS=${STEPS:-64}
DATA=${DATA:-data/qg.zarr}
LATENTS=${LATENTS:-data/qg-latents.zarr}
mkdir -p data runs
PY="${PY:-$(dirname "$LATENTDA")/python}" bash tools/build_dapper_qg.sh
[ -e "$DATA" ] && [ -z "${RESIMULATE:-}" ] && echo "reusing $DATA (RESIMULATE=1 to simulate again)" || \
    $LATENTDA simulate dapper-qg --out "$DATA" --trajectories "$TRAJECTORIES" --steps "$STEPS" --spinup 32 --seed 0 \
        --workers "$WORKERS" --overwrite
$LATENTDA train-ae --config configs/ae/qg.yaml --set data.path="$DATA" "$@"
$LATENTDA encode --autoencoder runs/ae-qg/autoencoder --data "$DATA" --out "$LATENTS" --overwrite
$LATENTDA train-ldm --config configs/ldm/qg.yaml --latents "$LATENTS" "$@"
echo "QG pipeline in runs/ldm-qg/pipeline: python tools/bench_dapper_qg.py --pipeline runs/ldm-qg/pipeline"
if [ -n "${SHIP:-}" ]; then
    rm -rf pretrained/qg && mkdir -p pretrained && cp -r runs/ldm-qg/pipeline pretrained/qg
    echo "copied to pretrained/qg"
fi
