#!/usr/bin/env bash
# Train latentda on DAPPER's QG model (dapper.mods.QG.sakov2008, docs/filter.md "The QG benchmark") with
# the commands a user would run: simulate → train-ae → encode → train-ldm. One latentda time step is one
# analysis cycle of the benchmark (dtout = 5). Needs DAPPER's Fortran module: `make dapper` (run first here).
# The pipeline lands in runs/ldm-qg/pipeline, for tools/bench_dapper_qg.py --pipeline.
#
# Simulation: ≈ 0.055 s per model step on one core, so 128 trajectories × (64 spin-up + 64) steps ≈ 15 min.
# The trainings have not been run to the end yet (their configs' step counts are guesses): on 2 CPU cores
# expect hours for train-ldm (2312 tokens per window). Extra arguments go to both trainings (e.g. --resume,
# or --set training.steps=5 for a smoke test).
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
    $LATENTDA simulate dapper-qg --out "$DATA" --trajectories "$TRAJECTORIES" --steps "$STEPS" --spinup 64 --seed 0 --overwrite
$LATENTDA train-ae --config configs/ae/qg.yaml --set data.path="$DATA" "$@"
$LATENTDA encode --autoencoder runs/ae-qg/autoencoder --data "$DATA" --out "$LATENTS" --overwrite
$LATENTDA train-ldm --config configs/ldm/qg.yaml --latents "$LATENTS" "$@"
echo "QG pipeline in runs/ldm-qg/pipeline: python tools/bench_dapper_qg.py --pipeline runs/ldm-qg/pipeline"
