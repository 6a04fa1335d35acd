#!/usr/bin/env bash
# Train the three priors of the exactness benchmark (tools/bench_exact.py, docs/exactness.md) on the
# linear-Gaussian system with the commands a user would run. Seeds are fixed in the configs.
#   (c) the full system: autoencoder 1×32×32 → 4×8×8, latent prior   runs/ldm-gaussian/pipeline
#   (b) the identity autoencoder, a pixel-space prior                 runs/ldm-gaussian-pixel/pipeline
# ((a), the exact denoiser, needs no training.) Pass e.g. --resume to continue interrupted runs.
# Wall time on 2 CPU cores: ~1 min simulate, ~6 min train-ae, ~25 min per train-ldm.
set -euo pipefail
cd "$(dirname "$0")/.."
LATENTDA=${LATENTDA:-.venv/bin/latentda}
SYSTEM="--variables 1 --size 32 --cutoff-wavenumber 2 --spectral-exponent 4 --correlation-time 10"
mkdir -p data runs
[ -e data/gaussian.zarr ] || $LATENTDA simulate gaussian --out data/gaussian.zarr --trajectories 256 --steps 64 --seed 0 $SYSTEM
$LATENTDA train-ae --config configs/ae/gaussian.yaml "$@"
$LATENTDA encode --autoencoder runs/ae-gaussian/autoencoder --data data/gaussian.zarr --out data/gaussian-latents.zarr --overwrite
$LATENTDA train-ldm --config configs/ldm/gaussian.yaml --latents data/gaussian-latents.zarr "$@"
$LATENTDA train-ae --config configs/ae/gaussian-identity.yaml "$@"
$LATENTDA encode --autoencoder runs/ae-gaussian-identity/autoencoder --data data/gaussian.zarr --out data/gaussian-pixels.zarr --overwrite
$LATENTDA train-ldm --config configs/ldm/gaussian-pixel.yaml --latents data/gaussian-pixels.zarr "$@"
echo "priors in runs/ldm-gaussian/pipeline (full) and runs/ldm-gaussian-pixel/pipeline (pixel space)"
