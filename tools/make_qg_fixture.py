"""Write tests/data/qg_truth.safetensors: 14 consecutive analysis-time states of the QG benchmark's truth,
for tests of the shipped QG pipeline (pretrained/qg) that need no Fortran.

The truth is tools/bench_dapper_qg.py's (``dapper.mods.QG.sakov2008``, T = 500, ``--seed`` 3000): held out
from the training data (``latentda simulate dapper-qg`` starts from perturbed sample states and spins up).
States ψ at observation cycles ko = 60 … 73 (one ``dtout`` apart, as the prior's time step), float16
(rounding error ~0.004 against the autoencoder's floor 0.34), key ``psi`` (14, 1, 129, 129). Needs DAPPER's
Fortran module (``make dapper``)::

    python tools/make_qg_fixture.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from latentda.data.io import atomic_path

CYCLES = range(60, 74)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("tests/data/qg_truth.safetensors"),
                        help="output file (default tests/data/qg_truth.safetensors: overwrites the committed fixture)")
    parser.add_argument("--seed", type=int, default=3000, help="seed of DAPPER's truth simulation (default 3000)")
    args = parser.parse_args()

    from bench_dapper_qg import _digest, _hmm  # the benchmark's own experiment and truth digest (same folder)
    from dapper.tools.seeding import set_seed

    HMM = _hmm(500.0, 250.0, processes=1)
    set_seed(args.seed)
    xx, _ = HMM.simulate()
    states = xx[np.asarray(HMM.tseq.kko)[list(CYCLES)]]
    psi = states.reshape(len(states), 1, 129, 129).astype(np.float16)
    metadata = {"hmm": "dapper.mods.QG.sakov2008", "T": "500", "seed": str(args.seed),
                "cycles": f"{CYCLES.start}-{CYCLES.stop - 1}", "dtout": "5"}
    with atomic_path(args.out, overwrite=True) as temporary:
        save_file({"psi": psi}, str(temporary), metadata=metadata)
    print(f"{args.out}: psi {psi.shape}, cycles {CYCLES.start}..{CYCLES.stop - 1}, std {states.std():.3f}; "
          f"truth_sha256 {_digest(xx)} (as in the benchmark's T = 500 JSONs)")


if __name__ == "__main__":
    main()
