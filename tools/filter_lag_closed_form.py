"""The cycling filter's lag against the Kalman filter, in closed form (docs/filter.md "Lag").

For latentda's linear-Gaussian system (every Fourier mode an AR(1) with the given correlation time)
with its exact window prior, the law of a filter member is Gaussian and follows a closed-form
recursion (``tests/test_filter.py::_scheme_closed_form``, which the sampler is tested against). This
prints, after ``--cycles`` cycles with 40 % of the 4×4 pixels observed per cycle (new positions each
cycle, noise 0.3), the analysis spread over the Kalman filter's, the gap of the analysis mean to the
Kalman mean (in Kalman standard deviations) and the RMSE of the mean to the truth over the Kalman
filter's, per window K, lag ℓ and context.

    python tools/filter_lag_closed_form.py --cycles 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from latentda.simulate.gaussian import GaussianSystem  # noqa: E402
from latentda.cli import ScriptHelpFormatter
from test_filter import _kalman_filter, _scheme_closed_form  # noqa: E402

SCHEMES = [(2, 1, 1), (8, 1, 7), (8, 2, 6), (8, 4, 4), (8, 7, 1)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--cycles", type=int, default=8, help="analysis cycles (one observed state each) before scoring")
    parser.add_argument("--correlation-times", type=float, nargs="+", default=[4.0, 20.0, 100.0],
                        help="correlation times τ_0 of the largest scales, in states (dt = 1); one table block each")
    args = parser.parse_args(argv)
    noise, slack, n = 0.3, 0.05, 16
    print("| correlation time | window K | lag ℓ | context | spread / Kalman | mean gap (Kalman σ) | RMSE / Kalman |")
    print("|---|---|---|---|---|---|---|")
    for tau in args.correlation_times:
        system = GaussianSystem(size=4, variables=1, cutoff_wavenumber=1.5, correlation_time=tau)
        truth = system.trajectory(args.cycles, np.random.default_rng(1))
        rng = np.random.default_rng(2)
        rows, values = [], []
        for k in range(args.cycles):
            mask = rng.uniform(size=(4, 4)) < 0.4
            observed = np.where(mask, truth[k, 0] + noise * rng.standard_normal((4, 4)), np.nan)
            rows.append(np.eye(n)[mask.ravel()])
            values.append(observed[mask])
        mean, cov = _kalman_filter(system, rows, values, noise)[-1]
        kalman_rmse = np.sqrt(((mean - truth[-1, 0].ravel()) ** 2).mean())
        for window, lag, context in SCHEMES:
            m, P = _scheme_closed_form(system, rows, values, noise, slack, window, lag, context)[-1]
            print(f"| {tau:g} | {window} | {lag} | {context} | {np.sqrt(np.trace(P) / np.trace(cov)):.2f} "
                  f"| {np.sqrt(((m - mean) ** 2 / np.diag(cov)).mean()):.2f} "
                  f"| {np.sqrt(((m - truth[-1, 0].ravel()) ** 2).mean()) / kalman_rmse:.3f} |")


if __name__ == "__main__":
    main()
