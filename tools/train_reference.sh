#!/usr/bin/env bash
# Train the reference Kolmogorov pipeline from scratch with the same commands a user would run,
# and copy it to pretrained/kolmogorov (what `make demo` uses). Seeds are fixed in the configs.
# The autoencoder learns from the first 128 trajectories, the prior from 512 (the first 128 are the
# same: trajectory i depends only on (seed, i), and the splits keep the first 80% for training).
# Wall time on 2 CPU cores: ~3 min simulate, ~13-21 min train-ae, ~4 min encode, ~45 min train-ldm.
set -euo pipefail
cd "$(dirname "$0")/.."
LATENTDA=${LATENTDA:-.venv/bin/latentda}
mkdir -p data runs
$LATENTDA simulate kolmogorov --out data/kolmogorov.zarr --trajectories 128 --steps 64 --seed 0 --overwrite
$LATENTDA train-ae --config configs/ae/kolmogorov.yaml "$@"
$LATENTDA simulate kolmogorov --out data/kolmogorov.zarr --trajectories 512 --steps 64 --seed 0 --overwrite
$LATENTDA encode --autoencoder runs/ae-kolmogorov/autoencoder --data data/kolmogorov.zarr --out data/latents.zarr --overwrite
$LATENTDA train-ldm --config configs/ldm/kolmogorov.yaml --latents data/latents.zarr "$@"
rm -rf pretrained/kolmogorov
mkdir -p pretrained
cp -r runs/ldm-kolmogorov/pipeline pretrained/kolmogorov
echo "reference pipeline in pretrained/kolmogorov"
