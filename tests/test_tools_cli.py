"""The command lines of tools/*.py: ``--help`` works and documents every option, and bad arguments stop
with a one-line parser error (exit 2) before any work.

Every call runs in ONE child Python (``runpy``, as ``python tools/X.py ...`` would), so that torch and
latentda are imported once for all the tools. The three tools that run DAPPER's QG model are called with
``--help`` only (it imports no model); tests/test_dapper_qg.py runs the benchmark where QG is built.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_box_dataset
from latentda.data import write_dataset

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
SCRIPTS = sorted(path.name for path in TOOLS.glob("*.py"))

RUNNER = r"""
import argparse, contextlib, io, json, runpy, sys, traceback

parsers = []
parse_known_args = argparse.ArgumentParser.parse_known_args


def recording(self, args=None, namespace=None):
    parsers.append(self)
    return parse_known_args(self, args, namespace)


argparse.ArgumentParser.parse_known_args = recording
results = []
for script, arguments in json.loads(sys.argv[1]):
    sys.argv, sys.path[0] = [script, *arguments], script.rsplit("/", 1)[0]
    del parsers[:]
    output, code = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    except BaseException:
        code, output = "exception", io.StringIO(output.getvalue() + traceback.format_exc())
    undocumented = [option for parser in parsers for action in parser._actions if not action.help
                    for option in (action.option_strings or [action.dest])]
    results.append({"code": code, "output": output.getvalue(), "undocumented": undocumented})
print(json.dumps(results))
"""


def _short_data(folder: Path) -> str:
    """A Kolmogorov-like dataset of 5 trajectories of 6 states: one held-out (test) trajectory, shorter
    than every tool's default needs."""
    path = folder / "short.zarr"
    return str(write_dataset(make_box_dataset(trajectories=5, times=6, size=8), path))


def _errors(data: str) -> dict[str, tuple[str, list[str], str]]:
    """name: (script, arguments, what the error line must say)."""
    unused = ["--pipeline", "never-loaded"]
    return {
        "samplers fields": ("bench_samplers.py", ["pc:8"], "config 'pc:8': has 2 fields, expected 3 to 5"),
        "samplers sampler": ("bench_samplers.py", ["foo:8:10"], "unknown sampler 'foo'"),
        "samplers number": ("bench_samplers.py", ["pc:8:x"], "config 'pc:8:x'"),
        "study_forecast length": ("study_forecast.py", [*unused, "--data", data],
                                  "--start 15 and --lead 8 need 24 states per held-out trajectory"),
        "bench_forecast length": ("bench_forecast.py", [*unused, "--data", data],
                                  "--window 16 and --lead 32 need 48 states per held-out trajectory"),
        "bench_posterior length": ("bench_posterior.py", [*unused, "--data", data],
                                   "--length 16 needs 16 states per held-out trajectory"),
        "bench_prior length": ("bench_prior.py", [*unused, "--data", data], "--length 32 needs 32 states"),
        "study_sampler config": ("study_sampler.py", [*unused, "--truth", data, "--configs", "pc:8"],
                                 "config 'pc:8': has 2 fields"),
        "study_sampler length": ("study_sampler.py", [*unused, "--truth", data, "--configs", "pc:8:10"],
                                 "--length 16 needs 16 states per trajectory"),
        "bench_distributed truth": ("bench_distributed.py", [*unused, "--tasks", "blankets", "--truth", data + "-missing"],
                                    "--truth " + data + "-missing: no such file or directory"),
        "bench_table_cycles pipeline": ("bench_table_cycles.py", unused, "--pipeline never-loaded: not a pipeline folder"),
        "bench_output_chunks members": ("bench_output_chunks.py", ["--members", "0"],
                                        "--members, --states, --size and --chunk-mib must be positive"),
        "bench_encode trajectories": ("bench_encode.py", ["--autoencoder", "never-loaded", "--data", data],
                                      "the large run encodes 16 trajectories"),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    errors = _errors(_short_data(tmp_path_factory.mktemp("tools")))
    jobs = [(name, ["--help"]) for name in SCRIPTS] + [(script, arguments) for script, arguments, _ in errors.values()]
    result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([[str(TOOLS / s), a] for s, a in jobs])],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    return {"help": dict(zip(SCRIPTS, results)),
            "errors": {name: (outcome, errors[name][2]) for name, outcome in zip(errors, results[len(SCRIPTS):])}}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_option(outcomes, script):
    outcome = outcomes["help"][script]
    assert outcome["code"] == 0, outcome["output"][-2000:]
    assert outcome["output"].startswith("usage:")
    assert outcome["undocumented"] == [], f"{script}: options without help: {outcome['undocumented']}"


@pytest.mark.parametrize("name", list(_errors("DATA")))
def test_bad_arguments_are_one_line_errors(outcomes, name):
    outcome, expected = outcomes["errors"][name]
    lines = outcome["output"].strip().splitlines()
    assert outcome["code"] == 2, outcome["output"][-2000:]
    assert "Traceback" not in outcome["output"]
    error = [line for line in lines if ": error: " in line]
    assert len(error) == 1 and expected in error[0], lines


def test_study_forecast_runs_its_default_conditionings(tmp_path):
    """tools/study_forecast.py on a tiny pipeline: its default grid (inpaint and mmps with σ_c 0.01) runs
    and prints a row per entry (σ_c is mmps' only: an inpaint entry must not pass one to the forecast)."""
    from conftest import make_tiny_pipeline

    make_tiny_pipeline(tmp_path / "pipeline")
    data = write_dataset(make_box_dataset(trajectories=10, times=24, size=8), tmp_path / "data.zarr")
    result = subprocess.run([sys.executable, str(TOOLS / "study_forecast.py"), "--pipeline", str(tmp_path / "pipeline"),
                             "--data", str(data), "--trajectories", "1", "--members", "2", "--lead", "1", "--start", "3",
                             "--grid", "inpaint:ddpm:2", "mmps0.01:ddpm:2"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "inpaint:ddpm:2" in result.stdout and "mmps0.01:ddpm:2" in result.stdout


def test_summaries_score_the_observed_pixels(monkeypatch):
    """bench_posterior.summarise (used by study_sampler and bench_exact's mask): the observed pixels are
    those a grid group observes, and their spread-skill ratio is 1 for members drawn around the truth with
    the spread of their error, 2 for members twice as wide there."""
    import numpy as np

    from latentda.observe.operators import ObservationGroup, ObservationOperator

    monkeypatch.syspath_prepend(str(TOOLS))
    from bench_posterior import observed_pixels, summarise

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((4, 2, 8, 8))
    values = np.full((4, 8, 8), np.nan)
    values[:, 2, 3] = truth[:, 1, 2, 3]
    values[:, 5, 1] = truth[:, 1, 5, 1]
    operator = ObservationOperator([ObservationGroup("v", [1], "identity", "grid", values, 0.1)])
    mask = observed_pixels(operator, 2, (8, 8))
    assert mask.sum() == 8 and mask[:, 1, 2, 3].all() and mask[:, 1, 5, 1].all() and not mask[:, 0].any()
    center = truth + 0.3 * rng.standard_normal((1, *truth.shape))  # the ensemble mean's error, std 0.3
    members = 4000
    for width, expected in ((1.0, 1.0), (2.0, 2.0)):
        wide = np.where(mask, width, 1.0)
        ensemble = center + 0.3 * wide * rng.standard_normal((members, *truth.shape))
        # the mean's error: the members' noise averages out, the centre's 0.3 stays
        summary = summarise(ensemble, truth, operator, np.ones((8, 8)))
        assert abs(summary["spread_skill_observed"] - expected) < 0.25 * expected


def test_probe_prior_directions_against_a_gaussian(monkeypatch):
    """tools/probe_prior_directions.py's measures on a Gaussian of known covariance with its exact denoiser: the
    principal directions and variances recovered from samples, the Jacobian along each exactly λ/(λ + σ²), the
    error along each the optimum λσ²/(λ + σ²) within sampling error — and a denoiser that shrinks too much reads low."""
    monkeypatch.syspath_prepend(str(TOOLS))
    from probe_prior_directions import directional_scores, principal_directions

    from latentda.diffusion.gaussian import GaussianDenoiser

    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    lam = torch.tensor([400.0, 50.0, 10.0] + [1.0] * 9, dtype=torch.float64)
    covariance = basis @ torch.diag(lam) @ basis.T
    draws = torch.randn(20000, 12, generator=g, dtype=torch.float64) @ (basis * lam.sqrt()).T
    variances, directions, spectrum = principal_directions(draws, 3)
    assert ((variances / lam[:3] - 1).abs() < 0.05).all()
    assert ((directions @ basis[:, :3]).diagonal().abs() > 0.995).all()
    assert abs(float(spectrum.sum()) / float(lam.sum()) - 1) < 0.05
    import probe_prior_directions

    monkeypatch.setattr(probe_prior_directions, "SPECTRUM_VALUES", draws.numel() - 1)  # too large: no partial spectrum
    assert principal_directions(draws, 3)[2] is None
    exact = GaussianDenoiser(torch.zeros(12, dtype=torch.float64), covariance)
    held = torch.randn(4000, 12, generator=g, dtype=torch.float64) @ (basis * lam.sqrt()).T
    truth = basis[:, :3].T.contiguous()
    for sigma in (20.0, 3.0):
        scores = directional_scores(exact, held, truth, sigma)
        expected = lam[:3] / (lam[:3] + sigma**2)
        assert abs(scores["jacobian"] - expected.numpy()).max() < 1e-9
        optimum = (lam[:3] * sigma**2 / (lam[:3] + sigma**2)).numpy()
        assert abs(scores["error"] / optimum - 1).max() < 0.1
    narrow = GaussianDenoiser(torch.zeros(12, dtype=torch.float64), covariance / 4)
    assert (directional_scores(narrow, held, truth, 20.0)["jacobian"] < 0.8 * (lam[:3] / (lam[:3] + 400)).numpy()).all()
