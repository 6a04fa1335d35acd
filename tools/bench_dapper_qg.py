"""DAPPER's QG benchmark (``dapper.mods.QG.sakov2008``): DAPPER's LETKF (and a DAPPER smoother) against
latentda's filter and smoother, on one twin experiment.

The experiment: the 129 × 129 streamfunction ψ of DAPPER's quasi-geostrophic model, 300 observations
per cycle (every 55th grid point, the whole pattern shifted by a random offset each cycle: "satellite
tracks"), noise variance 4; one cycle every ``dtout`` = 5 time units; T = 1500 (300 cycles), statistics
averaged after BurnIn = 250 (cycles 51…300). DAPPER documents LETKF(N=25, infl=1.04, loc_rad=10):
rmse.a 0.64.

All methods get the same truth ``xx`` and observations ``yy`` (``HMM.simulate()`` under ``--seed``);
each method's own randomness (its initial ensemble) is seeded with ``--seed + 1``. Scores are DAPPER's:
``xp.stats.average_in_time()`` → ``xp.avrgs`` (rmse and spread of the analyses ``a``, the filter's
forecasts ``f`` and, for smoothers, the smoothed states ``s``, over the observation cycles after the
burn-in; ``print_averages`` prints them). ``--T`` shortens the experiment for every method alike (the
burn-in keeps its fraction 250/1500 unless ``--burn-in`` is given).

Methods (``--methods``, default ``letkf``, plus ``latentda-filter latentda-smoother`` with ``--pipeline``):

- ``letkf``: ``LETKF(N=25, infl=1.04, loc_rad=10)`` (DAPPER's documented setting);
- ``enks``: ``EnKS("Sqrt", N=25, Lag=2, infl=1.04)``: DAPPER 1.7.1 has no *localized* smoother
  (the iLEnKS of sakov2008.py's comments is not in the release), so this global EnKS with 25 members
  for 16 641 unknowns is a weak baseline, included for completeness; it stores the whole ensemble
  trajectory (8·N·Nx bytes per cycle: 1 GB at T = 1500);
- ``ienks``: ``iEnKS("Sqrt", N=25, Lag=2, nIter=3, infl=1.04)``, global too;
- ``letkf-err<s>-<r>`` (e.g. ``letkf-err0.38-0.27``): the LETKF above with an *imperfect* model, DAPPER's
  plus smooth additive noise (:func:`latentda.integrations.imperfect_model.with_model_error`): per cycle s
  shared by all members (an error the ensemble does not see) and r per member (one it samples), fields
  smoothed over ``--model-error-length`` grid points; the truth stays the exact model's. It asks what the
  LETKF scores with a model that errs as much as a learned prior; the row records the imperfect model's
  one-cycle forecast from the truth (member and ensemble-mean rmse, spread), to set beside
  ``--forecast-skill``'s; ``--model-error-inflation`` and ``--model-error-members`` set its inflation and
  ensemble size (default the documented 1.04 and 25; ``letkf-err0-0`` is then the exact model's LETKF);
- ``letkf-learned`` (with ``--pipeline``): the hybrid filter, the same LETKF with the learned prior as its model
  (:func:`latentda.integrations.learned_model.with_learned_model`: each member's next state is one draw of the
  prior's forecast from its encoded last ``context`` states; ``context``, ``conditioning`` and ``condition_noise``
  of ``--latentda-options``, default 1, known for a prior trained with known frames else MMPS, 0.05; ``--settings``
  its sampler), ``--model-error-inflation`` and ``--model-error-members`` its inflation and ensemble size;
- ``latentda-filter`` / ``latentda-smoother``: :class:`latentda.integrations.dapper.LatentDA` (mode
  ``filter`` / ``smoother``, ``--members`` members) with a pipeline trained on QG states one ``dtout``
  apart (``latentda simulate dapper-qg``, ``tools/train_qg.sh``); ``--settings`` sets their
  PosteriorSettings and ``--latentda-options`` their other arguments (e.g. ``{"lag": 4}``; ``{"start_cycle":
  41}`` starts the filter at cycle 42 — its error is flat after ~5 cycles — so that cycles 51…100 of T = 500
  cost 59 cycles instead of 100).

``--forecast-skill CYCLES`` (with ``--pipeline``) adds how close the learned prior's dynamics are to
the model: :func:`latentda.integrations.dapper.forecast_skill` — at CYCLES cycles after the burn-in,
the prior's forecast from the true past (a filter's cycle with a perfect history) against DAPPER's
model from D(E(truth)) and persistence, ``--forecast-lead`` cycles ahead (``experiment.forecast_skill``
in the JSON); ``--methods`` may then be empty (``--methods``, no names).

The JSON holds, per method, the averages and the per-cycle series (``series``: rmse and spread of
``a``, ``f``, ``s`` by cycle), so runs of different lengths can be compared on common cycles. It is
written after every method. A method that fails (e.g. a diverging model) keeps the cycles it assessed
(``failed``; the next method runs), and so does one interrupted by Ctrl-C or SIGTERM (``interrupted``;
the run stops, exit status 130): ``series`` holds the cycles assessed, the rest null, and the averages
are over the cycles after the burn-in that were (``cycles_assessed``). A run too long for the time one
has is started in full and stopped when the time is up (``kill <pid of torchrun or python>``).

The model runs in this process (``--processes 1``, the default: DAPPER's QG ``model.mp`` and LETKF's
``mp`` off) or in DAPPER's multiprocessing pool (``--processes 0``: all cores).

Methods may run in separate processes (e.g. the LETKF on one core beside the latentda rows): with the same
``--seed`` they get the same truth and observations, which the JSON's ``truth_sha256`` and
``observations_sha256`` let one check.

    python tools/bench_dapper_qg.py --methods letkf --json runs/bench-qg/letkf.json
    python tools/bench_dapper_qg.py --T 250 --methods letkf latentda-filter latentda-smoother \\
        --pipeline runs/ldm-qg/pipeline --json runs/bench-qg/all.json

The latentda rows may deal their members over processes (:class:`LatentDA` under torchrun: member m on
process m mod P, the analyses gathered every cycle; the ensemble is the one-process ensemble), e.g. 8
members on two cores, 4 each, in the time of 4::

    torchrun --nproc_per_node 2 tools/bench_dapper_qg.py --T 250 --methods latentda-filter --members 8 \
        --pipeline runs/ldm-qg-K16/pipeline --json runs/bench-qg/filter-m8.json

Only the main process prints and writes; DAPPER's own methods run in a separate, single process.

Needs DAPPER's Fortran QG module: ``bash tools/build_dapper_qg.sh`` (``make dapper``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np

DOCUMENTED = {"letkf": "LETKF(N=25, infl=1.04, loc_rad=10): rmse.a 0.64 (dapper/mods/QG/sakov2008.py)"}
SUBS = ("a", "f", "s", "u")
MODEL_ERROR_ROW = r"letkf-err(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)"  # letkf-err<shared>-<independent>
QG_FIELDS = (1, 129, 129)


def _hmm(T: float, burn_in: float | None, processes: int):
    import dapper.mods as modelling
    from dapper.mods.QG import sakov2008

    HMM = sakov2008.HMM.copy()
    tseq = HMM.tseq
    if burn_in is None:
        burn_in = tseq.BurnIn * T / tseq.T
    burn_in = math.floor(burn_in / tseq.dto) * tseq.dto
    HMM.tseq = modelling.Chronology(dt=tseq.dt, dko=tseq.dko, T=T, BurnIn=burn_in)
    # HMM.copy() deep-copies the model_config whose bound `step` is HMM.Dyn.model: set mp on that copy
    HMM.Dyn.model.__self__.mp = _multiprocessing(processes)
    return HMM


def _multiprocessing(processes: int):
    """DAPPER's ``mp`` for --processes: False for 1 (serial), True for 0 (all cores), else the count."""
    return processes != 1 and (True if processes == 0 else processes)


def _pipeline(args):
    """The latentda pipeline of --pipeline, loaded once for every latentda method (None without it)."""
    if args.pipeline is None:
        return None
    from latentda import LatentDAPipeline

    return LatentDAPipeline.from_pretrained(str(args.pipeline))


def _autoencoder_floor(pipeline, xx, tseq, state_index=None) -> float:
    """DAPPER's rmse of the truth encoded and decoded, D(E(x_k)), averaged over the same cycles as the
    methods' (after the burn-in): no posterior over these latents scores lower on average."""
    from latentda.integrations.dapper import _fields_to_states, _states_to_fields

    states = xx[tseq.kko[tseq.masko]]
    fields = _states_to_fields(states, (pipeline.layout.num_channels, *pipeline.layout.shape), state_index)  # as LatentDA
    decoded = _fields_to_states(pipeline.decode(pipeline.encode(fields)), state_index)
    return float(np.sqrt(((decoded - states) ** 2).mean(axis=1)).mean())


def _forecast_options(args) -> dict:
    """The --latentda-options that set how the prior forecasts (the forecast skill's, the learned model's)."""
    return {key: args.latentda_options[key] for key in ("context", "condition_noise", "conditioning", "state_index",
                                                        "check_time_step") if key in args.latentda_options}


def _methods(args, pipeline) -> list:
    from dapper.da_methods import EnKS, LETKF, iEnKS

    mp = _multiprocessing(args.processes)

    def imperfect_model_letkf():  # the letkf-err and letkf-learned rows' LETKF
        return LETKF(N=args.model_error_members, infl=args.model_error_inflation, loc_rad=10, mp=mp)

    made = []
    for name in args.methods:
        if name == "letkf":
            made.append((name, LETKF(N=25, infl=1.04, loc_rad=10, mp=mp), None))
        elif re.fullmatch(MODEL_ERROR_ROW, name):
            shared, independent = (float(value) for value in re.fullmatch(MODEL_ERROR_ROW, name).groups())
            made.append((name, imperfect_model_letkf(), {"shared": shared, "independent": independent}))
        elif name == "letkf-learned":
            if pipeline is None:
                sys.exit(f"{name} needs --pipeline")
            made.append((name, imperfect_model_letkf(), "learned"))
        elif name == "enks":
            made.append((name, EnKS("Sqrt", N=25, Lag=2, infl=1.04), None))
        elif name == "ienks":
            made.append((name, iEnKS("Sqrt", N=25, Lag=2, nIter=3, infl=1.04), None))
        elif name.startswith("latentda-"):
            if pipeline is None:
                sys.exit(f"{name} needs --pipeline")
            from latentda.integrations.dapper import FILTER_ARGUMENTS, LatentDA

            mode = name.split("-", 1)[1]
            options = {key: value for key, value in args.latentda_options.items()  # the filter's apply to it only
                       if mode == "filter" or key not in FILTER_ARGUMENTS}
            made.append((name, LatentDA(pipeline=pipeline, N=args.members, mode=mode, settings=args.settings, **options),
                         None))
        else:
            sys.exit(f"unknown method {name}")
    return made


def _model_error_skill(noisy, xx, cycles: int = 8, members: int = 25) -> dict:
    """The imperfect model's one-cycle forecasts from the true state x_ko (``members`` copies), at ``cycles``
    cycles spread over those after the burn-in: the RMS error of a member and of the ensemble mean, and the
    spread (ddof 1), averaged over the cycles — to set beside ``forecast_skill``'s learned prior."""
    from latentda.integrations.dapper import advance, evenly_spaced

    tseq = noisy.tseq
    kko = np.asarray(tseq.kko)
    valid = [ko for ko in range(len(kko) - 1) if tseq.masko[ko]]
    chosen = evenly_spaced(valid, cycles)
    scores = np.zeros((len(chosen), 3))
    for row, ko in enumerate(chosen):
        ensemble = advance(noisy.Dyn, tseq, np.tile(xx[kko[ko]], (members, 1)), kko[ko], kko[ko + 1])
        error = ensemble - xx[kko[ko + 1]]
        scores[row] = (np.sqrt(np.mean(error**2, axis=1)).mean(), np.sqrt(np.mean(error.mean(0) ** 2)),
                       np.sqrt(ensemble.var(0, ddof=1).mean()))
    member, mean, spread = scores.mean(0)
    return {"cycles": chosen, "members": members, "member_rmse": float(member), "mean_rmse": float(mean),
            "spread": float(spread)}


def _averages(xp) -> dict:
    """DAPPER's averages by its own names: rmse = err.rms (the RMS over the grid of the error of the
    ensemble mean), spread = spread.rms (DAPPER's "rmv": the root of the mean ensemble variance), per
    subscript a / f / s / u, averaged over the cycles after the burn-in; plus LatentDA's residual_ratio."""
    out = {}
    for name, path in (("rmse", ("err", "rms")), ("spread", ("spread", "rms")), ("residual_ratio", ())):
        series = xp.avrgs
        for part in (name,) if not path else path:
            series = getattr(series, part, None) if not isinstance(series, dict) else series.get(part)
        if series is None:
            continue
        if hasattr(series, "val"):
            out[name] = float(series.val)
            continue
        for sub in SUBS:
            value = series.get(sub) if isinstance(series, dict) else getattr(series, sub, None)
            if value is not None and hasattr(value, "val") and np.isfinite(value.val):
                out[f"{name}.{sub}"] = float(value.val)
    return out


def _recorded(xp):
    """(score, subscript, per-cycle values) of DAPPER's rmse (err.rms) and spread (spread.rms) of the analyses,
    forecasts and smoothed states that the method's stats hold."""
    for name, path in (("rmse", ("err", "rms")), ("spread", ("spread", "rms"))):
        series = xp.stats
        for part in path:
            series = getattr(series, part, None)
        for sub in ("a", "f", "s"):
            values = getattr(series, sub, None) if series is not None else None
            if values is not None:
                yield name, sub, np.asarray(values, dtype=float)


def _series(xp) -> dict:
    """Per cycle (k = 1 … Ko + 1): DAPPER's rmse and spread of the analyses, forecasts and smoothed states,
    where recorded (e.g. to compare runs of different lengths)."""
    return {f"{name}.{sub}": [round(float(v), 5) if np.isfinite(v) else None for v in values]
            for name, sub, values in _recorded(xp) if np.isfinite(values).any()}


def _partial_averages(xp, tseq) -> dict:
    """The averages of a run stopped part-way: the mean of its per-cycle rmse and spread over the cycles after
    the burn-in that it assessed (DAPPER's ``average_in_time`` would give NaN), and how many those are."""
    out, masko = {}, np.asarray(tseq.masko, dtype=bool)
    for name, sub, values in _recorded(xp):
        values = values[: masko.size][masko[: len(values)]]
        done = values[np.isfinite(values)]
        if done.size:
            out[f"{name}.{sub}"] = float(done.mean())
            out[f"cycles_assessed.{sub}"] = int(done.size)
    return out


def assimilate_row(xp, hmm, xx, yy, tseq) -> tuple[dict, bool]:
    """Run one method: (its JSON row, whether it was interrupted). A run that fails (e.g. a diverging model) or
    is interrupted (Ctrl-C, or SIGTERM: a job stopped at the end of its allotted time) keeps what it assessed:
    ``failed`` or ``interrupted`` names why, its ``series`` hold every cycle assessed (the others null) and its
    averages are over the cycles after the burn-in that were (``cycles_assessed``)."""
    start = time.perf_counter()
    try:
        xp.assimilate(hmm, xx, yy)
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - record it; the caller goes on or stops
        wall = time.perf_counter() - start
        interrupted = isinstance(error, KeyboardInterrupt)
        partial = {**_partial_averages(xp, tseq), "series": _series(xp)} if hasattr(xp, "stats") else {}
        why = "interrupted" if interrupted else "failed"
        message = type(error).__name__ + (f": {error}" if str(error) else "")
        return {"method": str(xp), "wall_s": round(wall, 1), why: message, **partial}, interrupted
    wall = time.perf_counter() - start
    xp.stats.average_in_time()
    cycles_run = tseq.Ko + 1 - getattr(xp, "start_cycle", 0)
    return {"method": str(xp), "wall_s": round(wall, 1), "s_per_cycle": round(wall / cycles_run, 3),
            **_averages(xp), "series": _series(xp)}, False


def _interrupt_on_sigterm() -> None:
    """SIGTERM (``kill``, torchrun stopping its workers, a scheduler's time limit) raises KeyboardInterrupt, as
    Ctrl-C does, so that the method running keeps what it assessed (:func:`assimilate_row`)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _digest(arrays) -> str:
    """SHA-256 of arrays' float64 bytes (the truth ``xx``, the observations ``yy`` of every cycle)."""
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _write(path: Path | None, results: dict) -> None:
    """Write the results so far (after every method: a long run keeps what finished)."""
    if path:
        from latentda.data.io import atomic_path

        with atomic_path(path, overwrite=True) as temporary:  # a crash mid-write keeps the previous results
            temporary.write_text(json.dumps(results, indent=2))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=None,
                        help="letkf enks ienks letkf-err<s>-<r> letkf-learned latentda-filter latentda-smoother (default: letkf, plus "
                             "the latentda ones with --pipeline)")
    parser.add_argument("--pipeline", type=Path, help="latentda pipeline trained on QG (tools/train_qg.sh)")
    parser.add_argument("--members", type=int, default=8, help="latentda members (default 8)")
    parser.add_argument("--settings", help="latentda PosteriorSettings as JSON, e.g. '{\"steps\": 16}'")
    parser.add_argument("--latentda-options",
                        help="other LatentDA arguments as JSON, e.g. '{\"condition_noise\": 0.3, \"lag\": 2}'")
    parser.add_argument("--T", type=float, default=1500.0, help="experiment length in model time (default 1500: 300 cycles)")
    parser.add_argument("--burn-in", type=float, default=None, help="default: 250/1500 of T")
    parser.add_argument("--seed", type=int, default=3000, help="twin-experiment seed (default 3000)")
    parser.add_argument("--processes", type=int, default=1, help="1: no multiprocessing (default); 0: all cores")
    parser.add_argument("--forecast-skill", type=int, default=0, metavar="CYCLES",
                        help="with --pipeline: the prior's forecasts from the true past at CYCLES cycles after the burn-in "
                             "against DAPPER's model from D(E(truth)) and persistence (latentda.integrations.dapper."
                             "forecast_skill; --members members, --settings, the context, condition_noise, conditioning and state_index of --latentda-options, "
                             "--forecast-lead cycles ahead); 0: off")
    parser.add_argument("--forecast-lead", type=int, default=4, help="cycles ahead for --forecast-skill (default 4)")
    parser.add_argument("--model-error-length", type=float, default=8.0,
                        help="letkf-err rows: the model error fields' smoothing length in grid points (default 8)")
    parser.add_argument("--model-error-inflation", type=float, default=1.04,
                        help="letkf-err and letkf-learned rows: the LETKF's multiplicative inflation (default 1.04, the documented one)")
    parser.add_argument("--model-error-members", type=int, default=25,
                        help="letkf-err and letkf-learned rows: the LETKF's ensemble size (default 25, the documented one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    try:  # the JSON options, parsed once
        args.settings = json.loads(args.settings) if args.settings else None
        args.latentda_options = json.loads(args.latentda_options) if args.latentda_options else {}
    except json.JSONDecodeError as error:
        parser.error(f"--settings / --latentda-options: not JSON ({error})")
    if args.forecast_skill and args.pipeline is None:
        parser.error("--forecast-skill needs --pipeline")
    if args.methods is None:
        args.methods = ["letkf"] + (["latentda-filter", "latentda-smoother"] if args.pipeline else [])
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and any(not name.startswith("latentda-") for name in args.methods):
        parser.error("under torchrun only the latentda methods deal their members over the processes: run DAPPER's "
                     "methods in a separate, single process with the same --seed")
    if processes > 1 and args.forecast_skill:
        parser.error("--forecast-skill runs in a single process")
    main_process = int(os.environ.get("RANK", "0")) == 0
    say = print if main_process else (lambda *_, **__: None)  # the main process prints and writes for all
    if not main_process:
        args.json = None

    from dapper.tools.seeding import set_seed

    pipeline = _pipeline(args)
    from latentda.processes import process_state

    rank = int(os.environ.get("RANK", "0"))
    for turn in range(processes):
        # one process at a time: importing DAPPER's QG model rewrites the namelist file its Fortran step reads at
        # every call (docs/qg-benchmark.md, "One QG experiment at a time per installation")
        if turn == rank:
            HMM = _hmm(args.T, args.burn_in, args.processes)
            tseq = HMM.tseq
            methods = _methods(args, pipeline)  # before simulating: a bad --pipeline fails fast
            set_seed(args.seed)
            start = time.perf_counter()
            xx, yy = HMM.simulate()
            simulate_s = time.perf_counter() - start
        if processes > 1:
            process_state().wait_for_everyone()
    say(f"QG sakov2008: T={tseq.T} ({tseq.Ko + 1} cycles of dto={tseq.dto}), BurnIn={tseq.BurnIn} "
        f"(averages over cycles {int(tseq.masko.argmax()) + 1}..{tseq.Ko + 1}), seed {args.seed}; "
        f"truth and observations simulated in {simulate_s:.1f} s", flush=True)
    results = {"experiment": {"hmm": "dapper.mods.QG.sakov2008", "T": tseq.T, "BurnIn": tseq.BurnIn, "dto": tseq.dto,
                              "cycles": tseq.Ko + 1, "averaged_cycles": int(tseq.masko.sum()), "seed": args.seed,
                              "processes": args.processes, "member_processes": processes, "Nx": int(HMM.Nx), "Ny": 300,
                              "documented": DOCUMENTED,
                              # methods run in separate processes with the same --seed share this truth and these
                              # observations exactly: compare the digests
                              "truth_sha256": _digest(xx), "observations_sha256": _digest(yy)},
               "methods": {}}
    if pipeline is not None:
        floor = _autoencoder_floor(pipeline, xx, tseq, args.latentda_options.get("state_index"))
        results["experiment"]["autoencoder_floor_rmse"] = floor
        say(f"autoencoder floor (rmse of D(E(truth)) over the averaged cycles): {floor:.4f}", flush=True)
    if pipeline is not None and args.forecast_skill > 0:
        from latentda.integrations.dapper import forecast_skill

        start = time.perf_counter()
        options = _forecast_options(args)
        skill = forecast_skill(pipeline, HMM, xx, lead=args.forecast_lead, cycles=args.forecast_skill,
                               members=args.members, settings=args.settings, **options)
        skill["wall_s"] = round(time.perf_counter() - start, 1)
        results["experiment"]["forecast_skill"] = skill
        say(f"forecasts from the true past ({len(skill['cycles'])} cycles, context {skill['context']}, "
            f"{args.members} members, {skill['wall_s']} s), rmse by lead {skill['leads']}:", flush=True)
        for name in ("prior_rmse", "prior_spread", "model_rmse", "persistence_rmse"):
            say(f"  {name:17s}" + "".join(f"{value:8.3f}" for value in skill[name]), flush=True)
        _write(args.json, results)
    for name, xp, model_error in methods:
        hmm, model_error_row = HMM, {}
        if model_error == "learned":  # the LETKF with the learned prior as its model (the truth stays the exact model's)
            from latentda.integrations.learned_model import with_learned_model

            hmm = with_learned_model(HMM, pipeline, settings=args.settings, seed=args.seed + 2, **_forecast_options(args))
            learned = hmm.Dyn.model
            model_error_row = {"learned_model": {"context": learned.context, "conditioning": learned.conditioning,
                                                 "condition_noise": learned.condition_noise, "seed": learned.seed,
                                                 "settings": args.settings, "pipeline": str(args.pipeline)}}
            say(f"\n{name}: the LETKF with the learned prior as its model (context {learned.context}, "
                f"{learned.conditioning} conditioning)", flush=True)
        elif model_error is not None:  # the LETKF with an imperfect model (the truth stays the exact model's)
            from latentda.integrations.imperfect_model import with_model_error

            spec = {**model_error, "length": args.model_error_length}
            # with the LETKF's N members: the ensemble mean's one-cycle error is √(s² + r²/N)
            skill = _model_error_skill(with_model_error(HMM, QG_FIELDS, **spec, seed=args.seed + 3), xx,
                                       members=args.model_error_members)
            model_error_row = {"model_error": {**spec, "one_cycle": skill}}
            say(f"\n{name}: model error per cycle shared {spec['shared']}, independent {spec['independent']}, length "
                f"{spec['length']}: one-cycle forecast from the truth, member rmse {skill['member_rmse']:.3f}, "
                f"ensemble-mean rmse {skill['mean_rmse']:.3f}, spread {skill['spread']:.3f}", flush=True)
            hmm = with_model_error(HMM, QG_FIELDS, **spec, seed=args.seed + 2)
        set_seed(args.seed + 1)
        if pipeline is not None:  # the learned model forecasts once a cycle: DAPPER's own bar counts the cycles
            pipeline.set_progress_bar_config(disable=model_error == "learned")
        row, interrupted = assimilate_row(xp, hmm, xx, yy, tseq)
        series = row.pop("series", None)
        row.update(model_error_row)
        results["methods"][name] = row
        stopped = row.get("failed") or row.get("interrupted")
        if stopped:
            cycles = ", ".join(f"{key} {value:.4f}" for key, value in row.items() if key.startswith(("rmse.", "spread.")))
            say(f"\n{name}: {xp}  {'INTERRUPTED' if interrupted else 'FAILED'} after {row['wall_s']:.1f} s: {stopped}"
                + (f"\n  over the cycles it assessed after the burn-in: {cycles}" if cycles else ""), flush=True)
        else:
            say(f"\n{name}: {xp}  wall {row['wall_s']:.1f} s ({row['s_per_cycle']} s/cycle)")
            say("  " + ", ".join(f"{key} {value:.4f}" for key, value in row.items()
                                 if key not in ("method", "wall_s", "s_per_cycle", "model_error", "learned_model")),
                flush=True)
        if hasattr(xp, "stats"):
            del xp.stats
        if series is not None:
            row["series"] = series  # after the printout: one list per score, a value per cycle
        _write(args.json, results)
        if interrupted:  # the methods after it do not run; the JSON holds what finished
            raise SystemExit(130)
    return results


if __name__ == "__main__":
    _interrupt_on_sigterm()
    main()
