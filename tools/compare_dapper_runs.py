r"""Compare runs of tools/bench_dapper_qg.py cycle by cycle, on the same cycles of the same truth.

    python tools/compare_dapper_runs.py REFERENCE.json OTHER.json [MORE.json ...] --cycles 51 70 \
        [--method latentda-filter] [--members 8] [--per 10]
    python tools/compare_dapper_runs.py FILTER.json HYBRID.json:letkf-learned --cycles 51 80   # two methods

For every JSON: the mean over cycles [first, last] (1-based, inclusive) of DAPPER's per-cycle rmse and spread
of the method's analyses (smoothed states for a smoother), spread/rmse, and against the first JSON the paired
change, the mean of rmse_other(k) − rmse_reference(k) over the cycles ± its standard error (std / √n, cycles
taken as independent: the errors of neighbouring cycles are correlated, so it is a lower bound). Pairing cancels
what the cycles share (the same truth and observations): differences of a few percent are resolved in 20 cycles
that the unpaired means would not separate.

``--smoothed`` compares a filter's fixed-lag smoother instead: each state's last sample, DAPPER's ``rmse.s`` and
``spread.s`` of a lagged filter run (docs/filter.md, "Lag"); its last ℓ − 1 cycles are finalised with fewer
future cycles, so leave them out of ``--cycles``.

A run given as ``PATH.json:METHOD`` is read for that method instead of ``--method`` (methods of different runs, e.g.
latentda's filter against the LETKF with the learned prior as its model; a method other than latentda's smoother is
read by its analyses, ``rmse.a``, ``spread.a``).

``--per K`` adds the same figures for each block of K cycles within ``--cycles`` (e.g. ``--per 10``: decades), where
a drift or a transient shows that the whole range's mean hides. Where a filter's JSON holds its forecasts' series
(``rmse.f``), each line also gives a/f, the mean over the cycles of rmse.a(k) / rmse.f(k): the share of each
forecast's error the analysis keeps (1: the observations corrected nothing).

``--members N`` adds what N members would score, predicted from an M-member run's series: the ensemble mean of
M independent members errs by E|x̄_M − x|² = b² + s²(1 + 1/M) with s² the members' variance (DAPPER's spread²,
ddof 1), so rmse_N² ≈ rmse_M² − spread_M²(1/M − 1/N) cycle by cycle (docs/qg-benchmark.md, "Eight members"). M is read
from the JSON's method record (``N=M``).

Pair only runs of one truth and one set of observations: the same ``--seed``; a run of a longer T shares its first
cycles with a shorter one (DAPPER simulates in time order), so their JSONs' ``truth_sha256`` differ although the
cycles compared are the same. Each run's ``truth_sha256`` and T are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from latentda.cli import ScriptHelpFormatter

KEYS = {"latentda-filter": ("rmse.a", "spread.a"), "latentda-smoother": ("rmse.s", "spread.s")}


def load_series(path: Path, method: str, smoothed: bool = False) -> tuple[list, list, list | None, int | None, dict]:
    """(rmse, spread, forecast rmse, members, experiment) of one method's per-cycle series in a bench JSON
    (``smoothed``: of its smoothed states, ``rmse.s``, ``spread.s``); the forecast rmse (``rmse.f``) is None for
    smoothed states and for runs that kept no forecasts."""
    rmse_key, spread_key = ("rmse.s", "spread.s") if smoothed else KEYS.get(method, ("rmse.a", "spread.a"))
    try:
        result = json.loads(path.read_text())
        record = result["methods"][method]
        series = record["series"]
        experiment = dict(result["experiment"])
        rmse, spread = list(series[rmse_key]), list(series[spread_key])
        forecast = None if smoothed or "rmse.f" not in series else list(series["rmse.f"])
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such file")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SystemExit(f"error: {path}: not a bench_dapper_qg JSON with a per-cycle series of {method!r} "
                         f"({rmse_key}, {spread_key})")
    found = re.search(r"\bN=(\d+)", str(record.get("method", "")))
    return rmse, spread, forecast, int(found.group(1)) if found else None, experiment


def _run_spec(text: str, default_method: str) -> tuple[Path, str]:
    """``PATH.json:METHOD`` → (PATH.json, METHOD); a plain path → (path, ``default_method``)."""
    head, _, tail = text.rpartition(":")
    return (Path(head), tail) if head.endswith(".json") and tail else (Path(text), default_method)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def predicted_rmse(rmse: list[float], spread: list[float], members: int, target: int) -> float:
    """Mean over cycles of √(rmse² − spread²(1/members − 1/target)): the same posterior with target members."""
    shrink = 1 / members - 1 / target
    return mean([math.sqrt(max(r * r - s * s * shrink, 0.0)) for r, s in zip(rmse, spread)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("runs", nargs="+", help="bench JSONs (PATH.json or PATH.json:METHOD); the first is the reference")
    parser.add_argument("--cycles", nargs=2, type=int, required=True, metavar=("FIRST", "LAST"),
                        help="1-based analysis cycles, inclusive")
    parser.add_argument("--method", default="latentda-filter", help="the method's key in the JSONs")
    parser.add_argument("--members", type=int, help="also predict each run's rmse with this many members (N)")
    parser.add_argument("--smoothed", action="store_true",
                        help="the smoothed states' scores (rmse.s, spread.s: a lagged filter's fixed-lag smoother)")
    parser.add_argument("--per", type=int, metavar="K", help="also each block of K cycles within --cycles (10: decades)")
    args = parser.parse_args(argv)
    first, last = args.cycles
    if not 1 <= first <= last:
        parser.error(f"--cycles {first} {last}: need 1 ≤ FIRST ≤ LAST")
    if args.per is not None and args.per < 1:
        parser.error(f"--per {args.per}: need a positive number of cycles")
    if args.members is not None and args.members < 1:
        parser.error(f"--members {args.members}: need a positive number of members")
    specs = [_run_spec(text, args.method) for text in args.runs]
    runs = [(path, *load_series(path, method, args.smoothed)) for path, method in specs]
    for path, rmse, _, _, _, experiment in runs:
        if len(rmse) < last:
            raise SystemExit(f"error: {path}: its series has {len(rmse)} cycles, --cycles asks for {last}")
        missing = [first + k for k, value in enumerate(rmse[first - 1 : last]) if value is None]
        if missing:  # non-finite in the JSON: e.g. the cycles before a filter's start_cycle
            raise SystemExit(f"error: {path}: no score for cycle {missing[0]} ({len(missing)} of --cycles {first} {last} "
                             "have none: before the run's start_cycle?)")
        if experiment.get("seed") != runs[0][5].get("seed"):
            raise SystemExit(f"error: {path}: seed {experiment.get('seed')}, the reference's {runs[0][5].get('seed')}: "
                             "different truths cannot be paired")
    reference = runs[0][1]
    print(f"{args.method}{' (smoothed states)' if args.smoothed else ''}, cycles {first}–{last} ({last - first + 1})")
    for index, ((path, rmse, spread, forecast, members, experiment), (_, method)) in enumerate(zip(runs, specs)):
        name = path.name if method == args.method else f"{path.name}:{method}"
        print(f"{name} ({experiment.get('cycles')} cycles, truth {experiment.get('truth_sha256')}): "
              + summary(rmse, spread, forecast, reference if index else None, first, last,
                        (members, args.members) if args.members else None))
    if args.per:
        print(f"per {args.per} cycles: rmse (spread/rmse, a/f) and the paired change against {runs[0][0].name}")
        for start in range(first, last + 1, args.per):
            stop = min(start + args.per - 1, last)
            cells = [summary(rmse, spread, forecast, reference if index else None, start, stop, short=True)
                     for index, (_, rmse, spread, forecast, _, _) in enumerate(runs)]
            print(f"cycles {start}–{stop}: " + " | ".join(cells))


def summary(rmse: list[float], spread: list[float], forecast: list | None, reference: list | None, first: int, last: int,
            members: tuple[int | None, int] | None = None, short: bool = False) -> str:
    """One run's figures over cycles [first, last]: rmse, spread, spread/rmse, a/f (with a forecast series), the
    paired change against ``reference`` (module docstring) and, with ``members`` = (M, N), the N-member prediction;
    ``short``: rmse (spread/rmse, a/f) and the paired change, for a table's cell."""
    window = slice(first - 1, last)
    r, s = rmse[window], spread[window]
    n = len(r)
    ratio = None
    if forecast is not None and all(f is not None and f > 0 for f in forecast[window]):
        ratio = mean([a / f for a, f in zip(r, forecast[window])])
    if short:
        text = f"{mean(r):.3f} ({mean(s) / mean(r):.2f}{f', a/f {ratio:.3f}' if ratio is not None else ''})"
    else:
        text = f"rmse {mean(r):.3f}  spread {mean(s):.3f}  spread/rmse {mean(s) / mean(r):.2f}"
        if ratio is not None:
            text += f"  a/f {ratio:.3f}"
    if reference is not None:
        change = [a - b for a, b in zip(r, reference[window])]
        d = mean(change)
        se = math.sqrt(sum((c - d) ** 2 for c in change) / max(n - 1, 1) / n)
        text += f" {d:+.3f} ± {se:.3f} ({100 * d / mean(reference[window]):+.1f} %)" if short else \
            f"  paired change {d:+.3f} ± {se:.3f} ({100 * d / mean(reference[window]):+.1f} %)"
    if members is not None:
        if members[0] is None:
            text += "  (members unknown: no prediction)"
        else:
            text += f"  predicted with {members[1]} members: {predicted_rmse(r, s, members[0], members[1]):.3f}"
    return text


if __name__ == "__main__":
    sys.exit(main())
