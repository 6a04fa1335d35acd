#!/usr/bin/env bash
# Train latentda on DAPPER's QG model (dapper.mods.QG.sakov2008, docs/filter.md "The QG benchmark") with
# the commands a user would run: simulate → train-ae → encode → train-ldm. One latentda time step is one
# analysis cycle of the benchmark (dtout = 5). Needs DAPPER's Fortran module: `make dapper` (run first here).
# The pipeline lands in runs/ldm-qg/pipeline, for tools/bench_dapper_qg.py --pipeline.
#
# Measured on 2 CPU cores (docs/filter.md "The QG benchmark"): simulate 5.4 min (128 trajectories × (32 + 64)
# steps, 0.024 s per step), train-ae 18.7 min (3000 steps; part of it beside a LETKF run), encode 1.7 min,
# train-ldm 36 min (6000 steps). Extra arguments go to both trainings (e.g. --resume, or
# --set training.steps=5 for a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
LATENTDA=${LATENTDA:-.venv/bin/latentda}
TRAJECTORIES=${TRAJECTORIES:-128}
STEPS=${STEPS:-64}
DATA=${DATA:-data/qg.zarr}
LATENTS=${LATENTS:-data/qg-latents.zarr}
mkdir -p data runs
PY="${PY:-$(dirname "$LATENTDA")/python}" bash tools/build_dapper_qg.sh
[ -e "$DATA" ] && [ -z "${RESIMULATE:-}" ] && echo "reusing $DATA (RESIMULATE=1 to simulate again)" || \
    $LATENTDA simulate dapper-qg --out "$DATA" --trajectories "$TRAJECTORIES" --steps "$STEPS" --spinup 32 --seed 0 --overwrite
$LATENTDA train-ae --config configs/ae/qg.yaml --set data.path="$DATA" "$@"
$LATENTDA encode --autoencoder runs/ae-qg/autoencoder --data "$DATA" --out "$LATENTS" --overwrite
$LATENTDA train-ldm --config configs/ldm/qg.yaml --latents "$LATENTS" "$@"
echo "QG pipeline in runs/ldm-qg/pipeline: python tools/bench_dapper_qg.py --pipeline runs/ldm-qg/pipeline"
