"""The ``latentda`` command line: one program, one subcommand per pipeline stage.

    simulate → train-ae → encode → train-ldm → sample / reanalyze / forecast → evaluate

Every subcommand validates its inputs before doing any work. A problem with the user's input is a
one-line message on stderr and exit code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

from latentda import __version__
from latentda.errors import LatentdaError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


class ScriptHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help of the scripts in tools/: the module docstring as written and each option's default
    (unless None or False)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


# ---------------------------------------------------------------------------------- handlers
GAUSSIAN_OPTIONS = ("variables", "correlation_time", "cutoff_wavenumber", "spectral_exponent", "variable_correlation")


def _simulate(args: argparse.Namespace) -> None:
    """Options that do not apply to the chosen system are refused (a value given for another system
    would otherwise be ignored without a word); those left out take the system's defaults."""
    from latentda.simulate import GaussianSystem, write_gaussian_zarr, write_kolmogorov_zarr

    def refuse(names, where: str) -> None:
        given = [name for name in names if getattr(args, name) is not None]
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise LatentdaError(f"{options}: {'applies' if len(given) == 1 else 'apply'} to {where} only, not {args.system}")

    if args.system != "gaussian":
        refuse(GAUSSIAN_OPTIONS, "the gaussian system")
    if args.system != "kolmogorov" and args.coarsen not in (None, 1):
        refuse(["coarsen"], "the Kolmogorov flow")
    if args.system != "dapper-qg" and args.workers not in (None, 1):
        refuse(["workers"], "dapper-qg (the other simulators run batched in one process)")
    if args.system == "gaussian":
        refuse(["spinup"], "kolmogorov and dapper-qg (the gaussian system starts in its stationary law)")
    spinup = 64 if args.spinup is None else args.spinup
    if args.system == "dapper-qg":
        from latentda.simulate.dapper_qg import GRID_POINTS, write_dapper_qg_zarr

        if args.size not in (None, GRID_POINTS):
            raise LatentdaError(f"--size: the QG grid is fixed ({GRID_POINTS}×{GRID_POINTS}, DAPPER's)")
        path = write_dapper_qg_zarr(args.out, trajectories=args.trajectories, steps=args.steps, spinup=spinup,
                                    seed=args.seed, batch_size=args.batch_size, overwrite=args.overwrite,
                                    progress=not args.quiet, workers=args.workers or 1, resume=args.resume)
    elif args.system == "gaussian":
        given = {name: getattr(args, name) for name in GAUSSIAN_OPTIONS if getattr(args, name) is not None}
        system = GaussianSystem(size=args.size or 64, **given)
        path = write_gaussian_zarr(args.out, trajectories=args.trajectories, steps=args.steps, system=system,
                                   seed=args.seed, batch_size=args.batch_size, overwrite=args.overwrite,
                                   progress=not args.quiet, resume=args.resume)
    else:
        path = write_kolmogorov_zarr(args.out, trajectories=args.trajectories, steps=args.steps, size=args.size or 64,
                                     coarsen=args.coarsen or 1, spinup=spinup, seed=args.seed, batch_size=args.batch_size,
                                     overwrite=args.overwrite, progress=not args.quiet, resume=args.resume)
    print(f"wrote {path}")


def _inspect(args: argparse.Namespace) -> None:
    from latentda.data import FieldLayout, compute_statistics, describe_step, open_dataset, split_segments, time_step
    from latentda.data.times import describe_time, time_kind
    from latentda.data.statistics import MissingScan

    dataset = open_dataset(args.data, args.time_dim)
    layout = FieldLayout.from_dataset(dataset, args.variables)
    splits = split_segments(dataset)  # refuses an irregular time axis, naming where
    print(f"{args.data}: dims {dict(dataset.sizes)}")
    step, units = time_step(dataset["time"])
    times = dataset["time"].values
    print(f"times {describe_time(times[0], units)} … {describe_time(times[-1], units)}: {time_kind(dataset['time'])}")
    print(f"time step {describe_step(step, units)} (regular)")
    print(f"grid {layout.grid[0].name} × {layout.grid[1].name} = {layout.shape}, periodic {layout.periodic}, "
          f"{'lat-lon (area-weighted)' if layout.is_latlon else 'Cartesian'}")
    print("splits: " + ", ".join(f"{k} {sum(s.length for s in v)} states in {len(v)} segments" for k, v in splits.items()))
    _print_latent_shapes(layout)
    scan = MissingScan(layout.channels)
    statistics = compute_statistics(dataset, layout, splits["train"], progress=not args.quiet, scan=scan)
    print(f"training split: {scan.summary()}")
    scan.check(args.allow_missing)
    print(f"{'channel':<24}{'mean':>14}{'std':>14}")
    for name, mean, std in zip(statistics.channels, statistics.mean, statistics.std):
        print(f"{name:<24}{mean:>14.6g}{std:>14.6g}")
    if args.statistics_out:
        from latentda.data import atomic_path

        with atomic_path(args.statistics_out) as temporary:
            statistics.save(temporary)
        print(f"wrote {args.statistics_out}")


def _print_latent_shapes(layout) -> None:
    """The latent shape and compression factor the default autoencoder config (its latent_channels)
    would give on ``layout``'s grid for 1 to 5 stages of hidden_channels, as :class:`AutoEncoder`
    computes them (a periodic axis must be a multiple of the downsampling factor)."""
    from latentda.nn.autoencoder import AutoEncoder
    from latentda.training.autoencoder import AutoEncoderModelConfig

    default = AutoEncoderModelConfig()
    print(f"latent shape by the number of model.hidden_channels (model.latent_channels {default.latent_channels}):")
    for stages in range(1, len(default.hidden_channels) + 3):
        try:  # the narrowest network: only the shapes are wanted
            model = AutoEncoder(in_channels=layout.num_channels, latent_channels=default.latent_channels,
                                hidden_channels=[default.groups] * stages, blocks_per_stage=1,
                                sample_size=list(layout.shape), periodic=list(layout.periodic), groups=default.groups)
        except ValueError as error:
            print(f"  {stages} (grid ÷{2 ** (stages - 1)}): not possible ({error})")
            continue
        _, h, w = model.latent_shape

        def divisors(n: int) -> str:
            return ", ".join(str(d) for d in range(1, 9) if n % d == 0)

        print(f"  {stages} (grid ÷{model.downsample_factor}): {_latent_summary(model)}; "
              f"patch_size p_h in {{{divisors(h)}}}, p_w in {{{divisors(w)}}}")


def _latent_summary(model) -> str:
    """``c × h × w, compression ×f`` of an autoencoder."""
    return f"{' × '.join(map(str, model.latent_shape))}, compression ×{model.compression_factor:.3g}"


def _is_main_process() -> bool:
    """Whether this is the main (or only) process of a run under torchrun/accelerate launch."""
    from latentda.processes import process_state

    return process_state().is_main_process


def _train_ae(args: argparse.Namespace) -> None:
    from latentda.components import load_autoencoder
    from latentda.config import load_config
    from latentda.training.autoencoder import AutoEncoderConfig, train_autoencoder

    config = load_config(AutoEncoderConfig, args.config, _overrides(args))
    metrics = train_autoencoder(config, resume=args.resume, progress=not args.quiet)
    if not _is_main_process():  # one report for the processes training together
        return
    if metrics:
        print(f"validation reconstruction RMSE (standardised): {metrics['rmse_mean']:.4f} ("
              + ", ".join(f"{k} {v:.4f}" for k, v in metrics["rmse"].items()) + ")")
    folder = Path(config.output) / "autoencoder"
    print(f"latent shape {_latent_summary(load_autoencoder(folder)[0])}")
    print(f"wrote {folder}")


def _last_checkpoint(args: argparse.Namespace) -> Path | None:
    """The last checkpoint of the training run ``args`` describe (train-ae, train-ldm), None without one."""
    from latentda.config import load_config
    from latentda.training.checkpoint import latest_checkpoint

    if args.command == "train-ae":
        from latentda.training.autoencoder import AutoEncoderConfig as Config
    else:
        from latentda.training.diffusion import LatentDiffusionConfig as Config
    try:
        output = load_config(Config, args.config, _overrides(args)).output
    except LatentdaError:
        return None
    return latest_checkpoint(Path(output) / "checkpoints")


def _encode(args: argparse.Namespace) -> None:
    from latentda.encoding import encode_dataset

    path = encode_dataset(args.autoencoder, args.data, args.out, batch_size=args.batch_size, overwrite=args.overwrite,
                          progress=not args.quiet, device=args.device, time_dim=args.time_dim)
    if _is_main_process():
        print(f"wrote {path}")


def _train_ldm(args: argparse.Namespace) -> None:
    from latentda.config import load_config
    from latentda.training.diffusion import LatentDiffusionConfig, train_latent_diffusion

    config = load_config(LatentDiffusionConfig, args.config, _overrides(args))
    metrics = train_latent_diffusion(config, str(args.latents), resume=args.resume, progress=not args.quiet)
    if not _is_main_process():
        return
    if metrics:
        print("validation denoising MSE: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics["denoising_mse"].items()))
    print(f"wrote {Path(config.output) / 'pipeline'}")


def _sample(args: argparse.Namespace) -> None:
    from latentda.data import write_dataset
    from latentda.data.times import climate_calendar
    from latentda.diffusion.settings import SamplerSettings

    options = _sampler_overrides(args)
    SamplerSettings().with_overrides(**options).check_applies(options)  # the values given, checked before the pipeline loads
    pipeline = _load_pipeline(args, _device(args))
    pipeline.set_progress_bar_config(disable=args.quiet)
    if args.out.exists() and not args.overwrite:
        raise LatentdaError(f"{args.out}: already exists (pass --overwrite to replace it)")
    start_time = args.start_time
    if args.start_time is not None and climate_calendar(pipeline.time_units) is None:  # climate dates: the pipeline reads them
        import numpy as np

        try:
            start_time = np.datetime64(args.start_time)
        except ValueError:
            raise LatentdaError(f"--start-time '{args.start_time}' is not an ISO date-time (e.g. 2020-01-01T06:00)") from None
    dataset = pipeline.sample(args.length, args.members, steps=options.pop("steps"), method=options.pop("sampler"),
                              seed=args.seed, start_time=start_time, **options)
    print(f"wrote {write_dataset(dataset, args.out, overwrite=args.overwrite)}")


def _select_truth(args: argparse.Namespace):
    """The truth trajectory window named by --trajectory/--start/--length, and its layout."""
    from latentda.data import FieldLayout, open_dataset

    dataset = open_dataset(args.truth, args.time_dim)
    layout = FieldLayout.from_dataset(dataset)
    if "trajectory" in dataset.dims:
        if not 0 <= args.trajectory < dataset.sizes["trajectory"]:
            raise LatentdaError(f"--trajectory {args.trajectory} out of range (the truth has {dataset.sizes['trajectory']})")
        dataset = dataset.isel(trajectory=args.trajectory, drop=True)
    stop = dataset.sizes["time"] if args.length is None else args.start + args.length
    if not 0 <= args.start < stop <= dataset.sizes["time"]:
        raise LatentdaError(f"time window [{args.start}, {stop}) outside the truth's {dataset.sizes['time']} steps")
    return dataset.isel(time=slice(args.start, stop)), layout


def _observe(args: argparse.Namespace) -> None:
    from latentda.config import load_config
    from latentda.data import check_finite, write_dataset
    from latentda.observe import ObservationConfig, observations_to_dataset, synthesize
    from latentda.observe.files import MASKED_BY_TRUTH

    config = load_config(ObservationConfig, args.operator)
    if args.out.exists():
        raise LatentdaError(f"{args.out}: already exists (remove it first)")
    truth, layout = _select_truth(args)
    fields = layout.to_array(truth)
    check_finite(fields, layout.channels, " in the truth", allow_missing=True)  # inf refused; NaN = masked: unobserved
    operator = synthesize(fields, layout, config, seed=args.seed)
    attrs = {"title": "synthetic observations written by latentda observe", "source_truth": str(args.truth),
             "seed": args.seed}
    write_dataset(observations_to_dataset(operator, layout, truth["time"], attrs), args.out)
    masked = sum(group.attrs[MASKED_BY_TRUTH] for group in operator.groups)
    print(f"wrote {args.out}: {operator.size} observed values in {len(operator.groups)} group(s)"
          + (f"; {masked} left unobserved where the truth is NaN (masked)" if masked else ""))


def _reanalyze(args: argparse.Namespace) -> None:
    from latentda.observe import TableWindow, observation_dataset, open_observations

    settings = _posterior_settings(args, split_blankets=args.split == "blankets")
    observations = open_observations(args.observations, args.time_dim)  # a file, or a table placed on the window
    pipeline = _load_run_pipeline(args)
    observations = observation_dataset(observations, pipeline.layout, pipeline.time_step, TableWindow.of(args),
                                       time_units=pipeline.time_units)
    pipeline.reanalyze(observations, args.members, args.seed, settings, out=args.out, resume=args.resume,
                       overwrite=args.overwrite, attrs={"observations": _recorded(args.observations)}, report=print)


def _evaluate(args: argparse.Namespace) -> None:
    from latentda.data import open_dataset
    from latentda.evaluation import check_report_path, evaluate, write_report

    if args.out:
        check_report_path(args.out, args.overwrite)  # before any scoring
    if args.truth is None and args.observations is None:
        raise LatentdaError("give --truth, --observations or both to score the prediction against")
    prediction = open_dataset(args.prediction)
    truth = open_dataset(args.truth, args.time_dim) if args.truth is not None else None
    observations = _evaluation_observations(args.observations, prediction) if args.observations else None
    rows, summary = evaluate(prediction, truth, observations, args.trajectory, progress=not args.quiet)
    if truth is not None:
        columns = ("rmse", "crps", "spread", "spread_skill_ratio", "coverage_90")
        if any(isinstance(scores, dict) and "pole_rmse" in scores for scores in summary.values()):
            columns += ("pole_rmse",)  # unweighted, over the rows at ±90° (latentda.metrics.pole_rmse)
        _print_scores("channel", summary, columns)
    if observations is not None:
        print("against the observations (observation space, with their error):")
        _print_scores("observation", summary.get("observation_space", summary),
                      ("count", "bias", "rmse", "spread", "noise_std", "spread_skill_ratio", "crps"))
    if "observation_residual_ratio" in summary:
        print(f"observation residual ratio: {summary['observation_residual_ratio']['mean']:.3f}")
    if args.out:
        print(f"wrote {write_report(rows, summary, args.out, overwrite=args.overwrite)}")


def _print_scores(title: str, summary: dict, columns: tuple[str, ...]) -> None:
    """One line per channel (or observation group) of ``summary``: its ``columns``."""
    from latentda.evaluation import NOT_CHANNELS

    print(f"{title:<20}" + "".join(f"{n:>20}" for n in columns))
    for channel, scores in summary.items():
        if channel not in NOT_CHANNELS:
            print(f"{channel:<20}" + "".join(f"{scores.get(n, float('nan')):>20.4g}" for n in columns))


def _evaluation_observations(path: Path, prediction):
    """The observation file, or a table (CSV, parquet) placed on the prediction's times."""
    import numpy as np
    import pandas as pd

    from latentda.data import FieldLayout
    from latentda.evaluation import is_forecast, valid_times
    from latentda.observe import open_observations, table_to_dataset

    observations = open_observations(path)
    if isinstance(observations, pd.DataFrame):
        from latentda.data.times import axis_units

        times, tolerance = prediction["time"].values, None  # a reanalysis: rows within half a step of a state
        if is_forecast(prediction):  # rows within half the closest valid times' spacing of one (any spacing)
            times = valid_times(prediction)
            spacing = np.diff(times).min() if len(times) > 1 else np.zeros((), times.dtype)
            tolerance = spacing / np.timedelta64(2, "s") if np.issubdtype(times.dtype, np.datetime64) else spacing / 2
        states = prediction.isel(prediction_timedelta=0) if "prediction_timedelta" in prediction.dims else prediction
        return table_to_dataset(observations, FieldLayout.from_dataset(states), times=times, time_tolerance=tolerance,
                                time_units=axis_units(prediction["time"]))  # dates of a climate calendar: read as such
    return observations


def _forecast(args: argparse.Namespace) -> None:
    from latentda.data import open_dataset
    from latentda.observe import TableWindow, observation_dataset, open_observations

    if (args.observations is None) == (args.initial is None):
        raise LatentdaError("give exactly one of --observations and --initial")
    if args.initial is not None:  # options that would be ignored, and recorded as if they applied
        unused = ["guidance", "representation_error", "decode_chunk"] + (["iterations", "solver"] if args.conditioning != "mmps" else [])
        given = ["--" + name.replace("_", "-").replace("representation-error", "no-representation-error")
                 for name in unused if getattr(args, name, None) is not None]
        if given:
            verb, pronoun = ("applies", "it") if len(given) == 1 else ("apply", "them")
            if args.conditioning == "mmps":
                raise LatentdaError(f"{', '.join(given)}: {verb} to guidance by observations; a forecast from --initial "
                                    f"has none (leave {pronoun} out)")
            raise LatentdaError(f"{', '.join(given)}: {verb} to guidance by observations or to the mmps conditioning; a "
                                f"forecast from --initial with --conditioning {args.conditioning} has neither "
                                f"(leave {pronoun} out)")
    settings = _posterior_settings(args)
    pipeline = _load_run_pipeline(args)
    observations = open_observations(args.observations, args.time_dim) if args.observations is not None else None
    observations = observation_dataset(observations, pipeline.layout, pipeline.time_step, TableWindow.of(args),
                                       time_units=pipeline.time_units)
    initial = open_dataset(args.initial, args.time_dim) if args.initial is not None else None
    source = {"observations": _recorded(args.observations)} if args.observations is not None else \
        {"initial": _recorded(args.initial)}  # --resume refuses a run from another input
    pipeline.forecast(args.lead, args.members, observations, initial, args.seed, args.mode, args.conditioning,
                      args.condition_noise, settings, out=args.out, resume=args.resume, overwrite=args.overwrite,
                      attrs=source, report=print)


def _filter(args: argparse.Namespace) -> None:
    from latentda.data import open_dataset
    from latentda.observe import TableWindow, open_observations

    settings = _posterior_settings(args)
    pipeline = _load_run_pipeline(args)
    observations = open_observations(args.observations, args.time_dim)  # a table is read cycle by cycle
    initial = open_dataset(args.initial, args.time_dim) if args.initial is not None else None
    sources = {"observations": _recorded(args.observations)}  # --resume refuses a run from other inputs
    if args.initial is not None:
        sources["initial"] = _recorded(args.initial)
    pipeline.filter(observations, args.members, args.seed, settings, conditioning=args.conditioning,
                    condition_noise=args.condition_noise, context=args.context, lag=args.lag, initial=initial,
                    table_window=TableWindow.of(args), out=args.out, resume=args.resume, overwrite=args.overwrite, attrs=sources, report=print)


def _load_run_pipeline(args: argparse.Namespace):
    """The pipeline of a reanalysis or forecast, on this process's device (a GPU per process under
    torchrun/accelerate launch), its progress bars and per-member lines silenced by --quiet."""
    from latentda.processes import process_state

    pipeline = _load_pipeline(args, args.device or process_state().device)
    pipeline.set_progress_bar_config(disable=args.quiet)
    return pipeline


def _load_pipeline(args: argparse.Namespace, device: str):
    from latentda.pipeline import LatentDAPipeline

    pipeline = LatentDAPipeline.from_pretrained(args.pipeline, device=device)
    return pipeline.compile() if args.compile else pipeline


def _time_dim_option(sub: argparse.ArgumentParser, dataset: str) -> None:
    """``--time-dim``: the name of the time dimension of ``dataset`` (read by :func:`open_dataset`)."""
    sub.add_argument("--time-dim", metavar="NAME",
                     help=f"time dimension (or 1-D time coordinate) of {dataset}, renamed 'time' on reading "
                          "(default: 'time', or the one coordinate CF marks as time)")


def _pipeline_options(sub: argparse.ArgumentParser) -> None:
    """The options of every stage that loads a pipeline (read by :func:`_load_pipeline`)."""
    sub.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    sub.add_argument("--compile", action="store_true",
                     help="torch.compile the denoiser's blocks (faster unguided sampling; slower guidance on CPU: "
                          "docs/benchmarks.md)")


def _run_options(sub: argparse.ArgumentParser, observations_help: str, required: bool = True) -> None:
    """The options of the commands that sample a posterior (reanalyze, forecast, filter): the
    pipeline, the sampler and guidance, the observations (a file or a table) and a table's window."""
    from latentda.observe.window import TableWindow

    _pipeline_options(sub)
    _sampler_options(sub)
    _posterior_options(sub)
    sub.add_argument("--pipeline", required=True, type=Path, help="pipeline folder")
    sub.add_argument("--observations", required=required, type=Path, help=observations_help)
    _field_options(sub.add_argument_group("tabular observations (docs/observations.md)"), TableWindow, False)


def _device(args: argparse.Namespace) -> str:
    import torch

    if args.device is not None:
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _posterior_settings(args: argparse.Namespace, **extra):
    """The :class:`PosteriorSettings` of the options added by :func:`_posterior_options` (only those
    given: the dataclass and the pipeline hold the defaults), validated before any work."""
    from latentda.posterior.reanalysis import PosteriorSettings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PosteriorSettings)
             if getattr(args, f.name, None) is not None}
    settings = PosteriorSettings(**given, **extra)
    settings.validate()
    return settings


def _field_options(group, settings_class, pipeline_defaults: bool) -> None:
    """One option per field of the dataclass ``settings_class`` (``--sigma-start`` for ``sigma_start``),
    help and choices from the field's metadata; the default None ("the pipeline's") with
    ``pipeline_defaults``, else the field's own default."""
    import typing

    hints = typing.get_type_hints(settings_class)
    for field in dataclasses.fields(settings_class):
        kind = next(t for t in (*typing.get_args(hints[field.name]), hints[field.name]) if t in (int, float, str))
        choices = {"choices": field.metadata["choices"]} if "choices" in field.metadata else {"type": kind}
        default = "the pipeline's" if pipeline_defaults else field.default
        group.add_argument("--" + field.name.replace("_", "-"), **choices, default=None if pipeline_defaults else field.default,
                           help=f"{field.metadata['help']} (default: {default})")


def _sampler_options(sub: argparse.ArgumentParser) -> None:
    """The options of :class:`latentda.diffusion.settings.SamplerSettings` (default: the pipeline's)."""
    from latentda.diffusion.settings import SamplerSettings

    _field_options(sub.add_argument_group("sampler (defaults: the pipeline's pipeline_config.json)"), SamplerSettings, True)


def _sampler_overrides(args: argparse.Namespace) -> dict:
    """The values of the options added by :func:`_sampler_options` (None: not given)."""
    from latentda.diffusion.settings import SAMPLER_FIELDS

    return {name: getattr(args, name) for name in SAMPLER_FIELDS}


def _posterior_options(sub: argparse.ArgumentParser) -> None:
    """The guidance options of reanalyze and forecast (fields of PosteriorSettings; the sampler's
    are :func:`_sampler_options`)."""
    from latentda.nn.precision import PRECISIONS

    group = sub.add_argument_group("posterior guidance")
    group.add_argument("--guidance", choices=["mmps", "dps"], help="posterior guidance (default mmps)")
    group.add_argument("--iterations", type=_positive_int, help="MMPS solver iterations (default 3)")
    group.add_argument("--solver", choices=["cg", "gmres"], help="MMPS linear solver (default cg)")
    group.add_argument("--batch-members", type=_positive_int,
                       help="members sampled together (default 8 on GPU; on CPU 1 when observations guide the sampling through the "
                            "decoder, 8 for a forecast from --initial alone; the members are the same whatever the batch, up to float rounding)")
    group.add_argument("--precision", choices=PRECISIONS,
                       help="dtype of the networks' passes (default auto: bfloat16 on GPU, float32 on CPU; CG stays float64)")
    group.add_argument("--decode-chunk", type=_positive_int,
                       help="decode this many frames at a time inside the guidance (less memory, more compute)")
    group.add_argument("--no-representation-error", dest="representation_error", action="store_const", const=False,
                       help="use the observation noise alone in the likelihood (default: add the autoencoder's "
                            "reconstruction error per channel, autoencoder/representation_error.json)")
    group.add_argument("--prior-inflation", type=_positive_float,
                       help="sample with the prior's denoiser at the level σ/τ: a Gaussian prior's conditionals keep their "
                            "mean and widen their spread by τ, multiplicative inflation for a prior whose ensembles "
                            "are too narrow (default 1: the prior as trained; docs/configuration.md)")


def _recorded(value) -> str:
    """A setting as recorded in an output: a local path resolved (``--resume`` then accepts another
    spelling of the same file), anything else (a hub id, a number) as given."""
    return str(value.resolve()) if isinstance(value, Path) and value.exists() else str(value)


def _overrides(args: argparse.Namespace) -> dict:
    """``--set training.steps=100`` style overrides, values parsed as YAML scalars."""
    from latentda.config import parse_yaml

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LatentdaError(f"--set expects KEY=VALUE, got '{item}'")
        overrides[key] = parse_yaml(value, f"--set {key}")
    return overrides


# ---------------------------------------------------------------------------------- checks
# The options naming what a command reads, and those naming what it writes: an output must never
# be, lie inside or contain an input, whatever --overwrite says.
INPUT_OPTIONS = ("data", "truth", "observations", "initial", "pipeline", "prediction", "autoencoder", "latents",
                 "config", "operator")
OUTPUT_OPTIONS = {"out": "--out", "statistics_out": "--statistics-out"}
DATASET_OUTPUTS = {"simulate": "zarr", "encode": "zarr", "sample": None, "observe": None, "reanalyze": None,
                   "forecast": None, "filter": None}  # commands writing a dataset → the one format they write (None: by suffix)


def _check_arguments(args: argparse.Namespace) -> None:
    """Checks shared by every command, made before any work starts: the seed's range, the device,
    and outputs that overlap no input, exist only with --overwrite, and have a format the command
    writes (an unknown suffix found after sampling would waste the run)."""
    from latentda.config import MAX_SEED
    from latentda.data.io import check_output_path, output_format
    from latentda.devices import check_device

    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise LatentdaError(f"--seed {seed}: must be an integer in [0, {MAX_SEED}]")
    if getattr(args, "device", None) is not None:
        check_device(args.device, "--device")
    inputs = {name: getattr(args, name) for name in INPUT_OPTIONS if getattr(args, name, None) is not None}
    for name, option in OUTPUT_OPTIONS.items():
        out = getattr(args, name, None)
        if out is None:
            continue
        check_output_path(out, inputs, option)
        if name == "out" and args.command in DATASET_OUTPUTS:
            written = output_format(out)
            if DATASET_OUTPUTS[args.command] not in (None, written):
                raise LatentdaError(f"{option} {out}: {args.command} writes a zarr store (PATH.zarr)")
        if out.exists() and not getattr(args, "overwrite", False):
            hint = "pass --overwrite to replace it" if hasattr(args, "overwrite") else "remove it first"
            raise LatentdaError(f"{out}: already exists ({hint})")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``latentda COMMAND: error: ...`` and exit code 2,
    like every other bad input (argparse prints the usage first; ``--help`` still shows it)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler ending the job), handled like Ctrl-C: the run stops with a message
    and an interrupted ensemble keeps its finished members for ``--resume``."""


def _terminate(signum, frame) -> None:
    raise Terminated()


# ---------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latentda",
        description="Data assimilation with latent diffusion models: posterior ensembles of trajectories "
        "from sparse, noisy observations.",
    )
    parser.add_argument("--version", action="version", version=f"latentda {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, handler: Callable) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        return sub

    sub = command("simulate", "simulate built-in training data (2-D Kolmogorov flow, needs the 'sim' extra; "
                  "or a linear-Gaussian system whose posterior is known exactly)", _simulate)
    sub.add_argument("system", choices=["kolmogorov", "gaussian", "dapper-qg"],
                     help="which system to simulate (dapper-qg: DAPPER's QG model, one state per analysis cycle of "
                          "dapper.mods.QG.sakov2008, 129×129 psi; needs `make dapper`)")
    sub.add_argument("--out", required=True, type=Path, help="output zarr store (PATH.zarr)")
    sub.add_argument("--trajectories", type=_positive_int, default=64, help="number of independent trajectories (default 64)")
    sub.add_argument("--steps", type=_positive_int, default=64, help="states per trajectory (default 64), one time step apart: kolmogorov 0.2 time units, "
                          "gaussian 1, dapper-qg dtout = 5")
    sub.add_argument("--size", type=_positive_int, help="kolmogorov, gaussian: solver grid size (default 64)")
    sub.add_argument("--coarsen", type=_positive_int,
                     help="kolmogorov: block-average the solver grid by this factor (default 1; SDA's setting: "
                          "--size 256 --coarsen 4)")
    sub.add_argument("--spinup", type=int, help="kolmogorov, dapper-qg: states discarded before recording (default 64)")
    sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sub.add_argument("--batch-size", type=_positive_int, default=32, help="trajectories simulated at once (default 32)")
    sub.add_argument("--workers", type=_positive_int,
                     help="dapper-qg: processes simulating trajectories in parallel (default 1; same data whatever the number)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sub.add_argument("--resume", action="store_true",
                     help="finish an interrupted run (OUT.partial) with the same settings: its trajectories are kept")
    gaussian = sub.add_argument_group("gaussian system (see latentda.simulate.gaussian)")
    gaussian.add_argument("--variables", type=int, help="1 (u) or 2 (u, v) variables (default 2)")
    gaussian.add_argument("--correlation-time", type=float,
                          help="correlation time of the largest scales, in time steps (default 5)")
    gaussian.add_argument("--cutoff-wavenumber", type=float, help="k0 of the spectrum (default 4)")
    gaussian.add_argument("--spectral-exponent", type=float,
                          help="mode variance ∝ (1 + k²/k0²)^(-exponent/2) (default 4)")
    gaussian.add_argument("--variable-correlation", type=float,
                          help="correlation between u and v (default 0.5)")

    sub = command("inspect", "summarise a dataset: grid, periodicity, splits and per-channel statistics", _inspect)
    sub.add_argument("data", type=Path, help="netCDF file or zarr store")
    sub.add_argument("--variables", nargs="+", help="variables to use (default: all with a time axis)")
    sub.add_argument("--statistics-out", type=Path, help="write the training-split statistics to this JSON file")
    sub.add_argument("--allow-missing", action="store_true",
                     help="accept NaN outside the fixed mask (missing values; data.allow_missing in the AE config)")
    _time_dim_option(sub, "the dataset")

    sub = command("train-ae", "train the autoencoder (fields ↔ latents)", _train_ae)
    sub.add_argument("--config", required=True, type=Path, help="YAML config (see configs/ae/)")
    sub.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the run")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.steps=100")

    sub = command("encode", "encode a dataset into latent trajectories", _encode)
    sub.add_argument("--autoencoder", required=True, type=Path, help="trained autoencoder folder")
    sub.add_argument("--data", required=True, type=Path, help="netCDF file or zarr store to encode")
    sub.add_argument("--out", required=True, type=Path, help="output latents (LATENTS.zarr)")
    sub.add_argument("--batch-size", type=_positive_int, default=64, help="states encoded at once (default 64)")
    sub.add_argument("--device", help="torch device (default: cuda when available, else cpu; under torchrun each "
                                      "process's own)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _time_dim_option(sub, "--data")

    sub = command("train-ldm", "train the latent trajectory diffusion model", _train_ldm)
    sub.add_argument("--config", required=True, type=Path, help="YAML config (see configs/ldm/)")
    sub.add_argument("--latents", required=True, type=Path, help="latents written by 'latentda encode'")
    sub.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the run")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.steps=100")

    sub = command("sample", "sample unconditional trajectories", _sample)
    _pipeline_options(sub)
    _sampler_options(sub)
    sub.add_argument("--pipeline", required=True, type=Path, help="pipeline folder")
    sub.add_argument("--length", required=True, type=_positive_int, help="states per trajectory")
    sub.add_argument("--members", type=_positive_int, default=8, help="number of trajectories (default 8)")
    sub.add_argument("--out", required=True, type=Path, help="output FILE.nc or .zarr")
    sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sub.add_argument("--start-time", help="date-time of the first state (needed by calendar-conditioned models)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing output")

    sub = command("observe", "make synthetic observations of a truth", _observe)
    sub.add_argument("--truth", required=True, type=Path, help="netCDF/zarr dataset of true fields")
    sub.add_argument("--operator", required=True, type=Path, help="YAML observation operator config (see configs/observe/)")
    sub.add_argument("--out", required=True, type=Path, help="output observation file (OBS.nc)")
    sub.add_argument("--seed", type=int, default=0, help="seed of the observed positions and noise (default 0)")
    sub.add_argument("--trajectory", type=int, default=0, help="which trajectory of the truth (default 0)")
    sub.add_argument("--start", type=int, default=0, help="first time step of the window (default 0)")
    sub.add_argument("--length", type=_positive_int, help="number of time steps (default: to the end)")
    _time_dim_option(sub, "--truth")

    sub = command("reanalyze", "posterior ensemble of trajectories given observations", _reanalyze)
    _run_options(sub, "observation file (see 'latentda observe'), or a table of observations (CSV, parquet)")
    sub.add_argument("--members", type=_positive_int, default=8, help="ensemble size (default 8)")
    sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _time_dim_option(sub, "the observation file")
    sub.add_argument("--split", choices=["members", "blankets"], default="members",
                     help="under torchrun/accelerate launch: deal the members over the processes (default), or share "
                          "each trajectory's blanket windows over them (long trajectories; same output)")
    sub.add_argument("--out", required=True, type=Path, help="output POST.zarr (or .nc)")
    sub.add_argument("--resume", action="store_true", help="complete an interrupted run (keeps its finished members)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing output")

    sub = command("forecast", "forecast ensemble from observations or an initial state", _forecast)
    _run_options(sub, "observation window to assimilate first (ends 'now'): a file or a table (CSV, parquet)",
                 required=False)
    sub.add_argument("--initial", type=Path,
                     help="initial state(s) instead of observations (last states used); with a realization dim, "
                          "e.g. a reanalysis, member m continues from member m")
    _time_dim_option(sub, "the observation file or --initial")
    sub.add_argument("--lead", required=True, type=_positive_int, help="number of states to forecast after 'now'")
    sub.add_argument("--members", type=_positive_int, default=8, help="ensemble size (default 8)")
    from latentda.posterior.forecast_settings import ForecastSettings

    _field_options(sub.add_argument_group("forecast"), ForecastSettings, False)
    sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sub.add_argument("--out", required=True, type=Path, help="output FC.zarr (or .nc)")
    sub.add_argument("--resume", action="store_true", help="complete an interrupted run")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing output")

    sub = command("filter", "cycling filter: each state's analysis from the observations up to it (docs/filter.md)",
                  _filter)
    _run_options(sub, "observations, one cycle per time step: a file or a table (CSV, parquet)")
    sub.add_argument("--initial", type=Path, help="states just before the first cycle (e.g. a reanalysis: member m "
                                                  "starts from member m); default: the prior")
    _time_dim_option(sub, "the observation file and --initial")
    sub.add_argument("--members", type=_positive_int, default=8, help="ensemble size (default 8)")
    group = sub.add_argument_group("filter")
    group.add_argument("--conditioning", choices=["mmps", "inpaint", "known"], default="mmps",
                       help="how each window follows the member's history (default mmps; known: exact, for priors "
                            "trained with model.known_frames)")
    group.add_argument("--condition-noise", type=float, default=0.05,
                       help="σ_c of the mmps conditioning, standardised latent units (default 0.05)")
    group.add_argument("--context", type=_positive_int, help="history states conditioning each window (default K − lag)")
    group.add_argument("--lag", type=_positive_int,
                       help="states sampled anew each cycle, with their cycles' observations: the new one and the "
                            "lag − 1 before it (default K/2 for a prior of window K, at least 1: docs/filter.md)")
    sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sub.add_argument("--out", required=True, type=Path, help="output FILTER.zarr (or .nc), written cycle by cycle")
    sub.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished cycle")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing output")

    sub = command("evaluate", "score an ensemble against the truth or observations (rmse, crps, spread-skill, ...)",
                  _evaluate)
    sub.add_argument("--prediction", required=True, type=Path, help="ensemble (dims realization, time, ...), or forecasts "
                     "(realization, time = initialisation time, prediction_timedelta, ...: one or several "
                     "initialisation times, scored at their valid times and averaged by lead)")
    sub.add_argument("--truth", type=Path, help="true fields (matched by time); without it (real data) the "
                                                "ensemble is scored against --observations alone")
    sub.add_argument("--trajectory", type=int, help="which trajectory of the truth, when it has several")
    sub.add_argument("--observations", type=Path,
                     help="observation file or table (CSV, parquet): the ensemble scored against them in observation "
                          "space at the times both have (a forecast at its valid times), with the observation error")
    sub.add_argument("--out", type=Path, help="folder for metrics.csv, summary.json and figures (without it the "
                                              "summary is only printed)")
    sub.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out (a folder holding "
                                                              "anything else is refused)")
    _time_dim_option(sub, "--truth")
    return parser


def _is_main_rank() -> bool:
    """:func:`latentda.processes.is_main_rank`, without importing torch where it is not loaded yet (no
    process group then: the launcher's ``RANK`` tells)."""
    if "torch" not in sys.modules:
        return os.environ.get("RANK", "0") in ("", "0")
    from latentda.processes import is_main_rank

    return is_main_rank()


# Commands that do their work on one process. Under torchrun/accelerate launch the main process runs
# them alone, as if not launched (the same result as one process: `sample` draws every member from one
# generator); the others exit at once, instead of each doing all the work and writing the same output.
ONE_PROCESS_COMMANDS = frozenset({"simulate", "inspect", "observe", "sample", "evaluate"})
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                       "ROLE_RANK", "ROLE_WORLD_SIZE")


@contextlib.contextmanager
def _one_process_for(command: str):
    """Yields whether this process runs ``command``: always, but for a command of
    :data:`ONE_PROCESS_COMMANDS` launched on several processes, where only the main one does (with the
    launcher's variables hidden, so that nothing joins a process group the others will not join)."""
    processes = int(os.environ.get("WORLD_SIZE") or 1)
    if command not in ONE_PROCESS_COMMANDS or processes == 1:
        yield True
        return
    if not _is_main_rank():
        yield False
        return
    print(f"latentda {command}: runs on one process (the main one); the launcher's other {processes - 1} have nothing "
          "to do", file=sys.stderr)
    hidden = {name: os.environ.pop(name) for name in _LAUNCHER_VARIABLES if name in os.environ}
    try:
        yield True
    finally:
        os.environ.update(hidden)


def _named_as_option(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """``message`` with its leading keywords of the Python API (``condition_noise: …``, as the library's
    checks name a sampling, posterior or forecast setting) replaced by the command's options
    (``--condition-noise: …``)."""
    from latentda.posterior.forecast import ForecastSettings
    from latentda.posterior.reanalysis import PosteriorSettings

    names, separator, rest = message.partition(": ")
    settings = ({f.name for f in dataclasses.fields(PosteriorSettings)} | {f.name for f in dataclasses.fields(ForecastSettings)}
                | {"members", "seed", "lead", "context", "lag", "start_time"})
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest: max(a.option_strings, key=len) for a in commands.choices[command]._actions
               if a.option_strings and a.dest in settings}  # settings' keywords only: never a path or "config"
    named = [options.get(name) for name in names.split(", ")]
    if not separator or None in named:
        return message
    return f"{', '.join(named)}: {rest}"


@contextlib.contextmanager
def _own_warnings_on_one_line(command: str):
    """latentda's own warnings printed as ``latentda COMMAND: warning: message`` (the form of its errors),
    not with the file, line and source of the call; other libraries' warnings keep Python's format."""
    package = str(Path(__file__).resolve().parent)
    default = warnings.formatwarning

    def formatted(message, category, filename, lineno, line=None):
        if category is UserWarning and str(Path(filename).resolve()).startswith(package):
            return f"latentda {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatted
    try:
        yield
    finally:
        warnings.formatwarning = default


def main(argv: Sequence[str] | None = None) -> int:
    from latentda.allocator import keep_freed_memory

    keep_freed_memory()  # 1.3× faster sampling on CPU (latentda.allocator)
    parser = build_parser()
    args = parser.parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        with _own_warnings_on_one_line(args.command), _one_process_for(args.command) as mine:
            if mine:
                _check_arguments(args)
                args.handler(args)
    except KeyboardInterrupt as interrupt:
        if _is_main_rank():  # once, not once per process
            print(f"latentda {args.command}: interrupted", file=sys.stderr)
            work = {"simulate": "trajectories", "reanalyze": "members", "forecast": "members", "filter": "cycles"}.get(args.command)
            partial = Path(f"{args.out}.partial") if work and getattr(args, "out", None) else None
            if partial is not None and partial.is_dir():
                print(f"latentda {args.command}: the finished {work} are kept in {partial}: the same command with --resume "
                      "continues", file=sys.stderr)
            checkpoint = _last_checkpoint(args) if args.command in ("train-ae", "train-ldm") else None
            if checkpoint is not None:
                print(f"latentda {args.command}: the checkpoints are kept (the last: {checkpoint}): the same command with "
                      "--resume continues from it", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(interrupt, Terminated) else 130
    except Exception as error:  # a run removes the store it created (latentda.runs); an interrupted one is kept
        if not isinstance(error, LatentdaError):
            raise
        print(f"latentda {args.command}: error: {_named_as_option(str(error), parser, args.command)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
