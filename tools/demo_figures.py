r"""Figures of a reanalysis (and forecast) for a first look: what was observed, what was recovered,
how uncertain it is.

    python tools/demo_figures.py --truth demo/truth.zarr --observations demo/observations.nc \
        --reanalysis demo/reanalysis.zarr --forecast demo/forecast.zarr --out demo/figures

Writes ``reanalysis.png`` (rows: truth, observations, posterior mean, posterior std, two members;
columns: a few times) for one variable, and ``skill.png`` (RMSE and spread of the reanalysis by
time and of the forecast by lead time).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from latentda.data import open_dataset  # noqa: E402
from latentda.metrics import ensemble_scores  # noqa: E402
from latentda.cli import ScriptHelpFormatter


def _truth_at(truth, times, trajectory):
    if "trajectory" in truth.dims:
        truth = truth.isel(trajectory=trajectory, drop=True)
    return truth.sel(time=times, method="nearest")


def reanalysis_figure(truth, observations, posterior, variable: str, out: Path, columns: int = 5) -> None:
    times = posterior["time"].values
    picks = np.linspace(0, len(times) - 1, columns).round().astype(int)
    truth = _truth_at(truth, times, 0)
    observed = next((name for name, v in observations.data_vars.items()
                     if v.attrs.get("latentda_source", "").split() == [variable] and v.attrs.get("latentda_sampling") == "grid"), None)
    rows = [("truth", truth[variable].values, "RdBu_r")]
    if observed is not None:
        rows.append(("observations", observations[observed].values, "RdBu_r"))
    mean = posterior[variable].mean("realization").values
    std = posterior[variable].std("realization").values
    rows += [("posterior mean", mean, "RdBu_r"), ("posterior std", std, "viridis")]
    rows += [(f"member {m}", posterior[variable].isel(realization=m).values, "RdBu_r") for m in range(min(2, posterior.sizes["realization"]))]
    limit = float(np.nanmax(np.abs(rows[0][1])))
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.3 * columns, 2.2 * len(rows)), constrained_layout=True)
    for r, (label, data, cmap) in enumerate(rows):
        for c, t in enumerate(picks):
            ax = axes[r, c]
            if label == "observations":
                ax.imshow(np.zeros_like(data[t]), cmap="Greys", vmin=0, vmax=1, origin="lower")
                yy, xx = np.nonzero(~np.isnan(data[t]))
                ax.scatter(xx, yy, c=data[t][yy, xx], cmap=cmap, vmin=-limit, vmax=limit, s=6)
                ax.set_xlim(-0.5, data.shape[-1] - 0.5)
                ax.set_ylim(-0.5, data.shape[-2] - 0.5)
            else:
                vmin, vmax = (0, float(np.nanmax(data))) if cmap == "viridis" else (-limit, limit)
                image = ax.imshow(data[t], cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {times[t]:.1f}" if np.issubdtype(times.dtype, np.number) else str(times[t])[:16])
            if c == 0:
                ax.set_ylabel(label)
        if label in ("truth", "posterior std"):
            figure.colorbar(image, ax=axes[r, :], shrink=0.8)
    figure.suptitle(f"{variable}: reanalysis of sparse noisy observations")
    figure.savefig(out, dpi=100)
    plt.close(figure)


def skill_figure(truth, posterior, forecast, variables: list[str], out: Path) -> None:
    panels = [("reanalysis", posterior)] + ([("forecast", forecast)] if forecast is not None else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), constrained_layout=True, squeeze=False)
    for ax, (label, ensemble) in zip(axes[0], panels):
        if "prediction_timedelta" in ensemble.dims:
            init = ensemble["time"].values[0]
            ensemble = ensemble.isel(time=0, drop=True).rename(prediction_timedelta="time")
            ensemble = ensemble.assign_coords(time=init + ensemble["time"].values)
        target = _truth_at(truth, ensemble["time"].values, 0)
        for variable in variables:
            scores = ensemble_scores(ensemble[variable].values[:, :, None], target[variable].values[:, None])
            line, = ax.plot(scores["rmse"][:, 0], label=f"{variable} RMSE")
            ax.plot(scores["spread"][:, 0], "--", color=line.get_color(), label=f"{variable} spread")
        ax.set_xlabel("time step" if label == "reanalysis" else "lead (steps)")
        ax.set_title(label)
        ax.legend(fontsize=8)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--truth", required=True,
                        help="truth dataset (latentda simulate's output; trajectory 0 is the one observed)")
    parser.add_argument("--observations", required=True, help="observation file (latentda observe's output)")
    parser.add_argument("--reanalysis", required=True, help="reanalysis ensemble (latentda reanalyze's output)")
    parser.add_argument("--forecast", help="forecast ensemble (latentda forecast's output) for the skill figure")
    parser.add_argument("--variable", default="u", help="variable shown in reanalysis.png")
    parser.add_argument("--out", type=Path, default=Path("demo/figures"),
                        help="folder that receives reanalysis.png and skill.png (created if missing)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    truth, observations, posterior = open_dataset(args.truth), open_dataset(args.observations), open_dataset(args.reanalysis)
    forecast = open_dataset(args.forecast) if args.forecast else None
    reanalysis_figure(truth, observations, posterior, args.variable, args.out / "reanalysis.png")
    skill_figure(truth, posterior, forecast, [str(v) for v in posterior.data_vars], args.out / "skill.png")
    print(f"wrote {args.out / 'reanalysis.png'} and {args.out / 'skill.png'}")


if __name__ == "__main__":
    main()
