#!/usr/bin/env bash
# Train the three priors of the exactness benchmark (tools/bench_exact.py, docs/exactness.md) on the
# linear-Gaussian system with the commands a user would run. Seeds are fixed in the configs.
#   (c) the full system: autoencoder 1×32×32 → 4×8×8, latent prior   runs/ldm-gaussian/pipeline
#   (b) the identity autoencoder, a pixel-space prior                 runs/ldm-gaussian-pixel/pipeline
# ((a), the exact denoiser, needs no training.) Pass e.g. --resume to continue interrupted runs.
# The system: one variable on 32 × 32, k0 = 2, spectral exponent 4, correlation time 10, 256 trajectories × 64
# states (data/gaussian.zarr; an existing store is checked to be this one, RESIMULATE=1 writes it again).
# Wall time on 2 CPU cores: ~1 min simulate, ~6 min train-ae, ~25 min per train-ldm.
set -euo pipefail
cd "$(dirname "$0")/.."
LATENTDA=${LATENTDA:-.venv/bin/latentda}
LAUNCHER=$(command -v "$LATENTDA") || { echo "train_gaussian.sh: $LATENTDA not found (set LATENTDA)" >&2; exit 2; }
PY=${PY:-$(dirname "$(readlink -f "$LAUNCHER")")/python}  # the interpreter latentda runs under (PY=... to set it)
SYSTEM="--variables 1 --size 32 --cutoff-wavenumber 2 --spectral-exponent 4 --correlation-time 10"
TRAJECTORIES="--trajectories 256 --steps 64 --seed 0"
mkdir -p data runs
if [ -e data/gaussian.zarr ] && [ -z "${RESIMULATE:-}" ]; then
    # an existing store is reused only if it is this benchmark's system (one written by a plain
    # `latentda simulate gaussian` has 2 variables and other scales: the identity autoencoder would refuse it
    # after the first prior's training)
    "$PY" - <<'PY' || exit 2
import sys
import xarray as xr
from latentda.simulate.gaussian import GaussianSystem
from latentda.errors import LatentdaError
try:
    ds = xr.open_zarr("data/gaussian.zarr")
    system = GaussianSystem.from_attrs(ds.attrs)
except (LatentdaError, OSError, ValueError, KeyError) as error:
    sys.exit(f"data/gaussian.zarr: {error} (RESIMULATE=1 writes the benchmark's system over it)")
expected = GaussianSystem(variables=1, size=32, cutoff_wavenumber=2.0, spectral_exponent=4.0, correlation_time=10.0)
if system != expected or ds.sizes.get("trajectory") != 256 or ds.sizes.get("time") != 64 or ds.attrs.get("seed") != 0:
    sys.exit(f"data/gaussian.zarr holds another system ({system}, {dict(ds.sizes)}, seed {ds.attrs.get('seed')}), "
             "not this benchmark's "
             f"({expected}, 256 trajectories of 64 states, seed 0): move it away, or RESIMULATE=1 writes the benchmark's over it")
PY
    echo "reusing data/gaussian.zarr (RESIMULATE=1 to simulate again)"
else
    $LATENTDA simulate gaussian --out data/gaussian.zarr $TRAJECTORIES $SYSTEM --overwrite
fi
$LATENTDA train-ae --config configs/ae/gaussian.yaml "$@"
$LATENTDA encode --autoencoder runs/ae-gaussian/autoencoder --data data/gaussian.zarr --out data/gaussian-latents.zarr --overwrite
$LATENTDA train-ldm --config configs/ldm/gaussian.yaml --latents data/gaussian-latents.zarr "$@"
$LATENTDA train-ae --config configs/ae/gaussian-identity.yaml "$@"
$LATENTDA encode --autoencoder runs/ae-gaussian-identity/autoencoder --data data/gaussian.zarr --out data/gaussian-pixels.zarr --overwrite
$LATENTDA train-ldm --config configs/ldm/gaussian-pixel.yaml --latents data/gaussian-pixels.zarr "$@"
echo "priors in runs/ldm-gaussian/pipeline (full) and runs/ldm-gaussian-pixel/pipeline (pixel space)"
