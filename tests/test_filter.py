"""The cycling filter (latentda.posterior.filtering): shapes, members independent of their batch,
causality (cycle k never reads or depends on later observations), resuming from a cycle's state,
and the linear-Gaussian closed form with the exact prior (the scheme's own recursion, and its gap to
the Kalman filter)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import interrupt_filter_at, make_tiny_pipeline
from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.posterior.filtering import FilterState, filter_members, join_cycles, split_cycles
from latentda.posterior.reanalysis import PosteriorSettings

CYCLES = 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pipeline, truth = make_tiny_pipeline(tmp_path_factory.mktemp("filter") / "pipeline", times=6)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, pipeline.layout.to_array(truth)


def _operators(fields: np.ndarray, seed: int = 0, cycles: int = CYCLES) -> list:
    """Per cycle half the u pixels (a new mask each cycle) and two off-grid points of v; cycle 2 unobserved."""
    rng = np.random.default_rng(seed)
    operators = []
    for t in range(cycles):
        grid = np.where(rng.uniform(size=(1, 8, 8)) < 0.5, fields[t, 0] + 0.1 * rng.standard_normal((8, 8)), np.nan)
        points = rng.uniform(0, 8, size=(2, 2))
        groups = [ObservationGroup("u", [0], "identity", "grid", grid, 0.1),
                  ObservationGroup("p", [1], "identity", "points", rng.standard_normal((1, 2)), 0.2, points=points,
                                   periodic=(True, True))]
        operators.append(None if t == 2 else ObservationOperator(groups))
    return operators


def _run(pipeline, operators, members, **options):
    settings = PosteriorSettings(steps=3, batch_members=options.pop("batch_members", None))
    return list(filter_members(pipeline, operators, members, settings, seed=3, **options))


def test_cycles_shapes_and_state(tiny):
    pipeline, fields = tiny
    out = _run(pipeline, _operators(fields), [0, 1, 2], forecasts=True)
    assert [c.cycle for c in out] == list(range(CYCLES))
    K = pipeline.window
    for c in out:
        assert c.analysis.shape == (3, 2, 8, 8) and np.isfinite(c.analysis).all()
        assert c.latents.shape == (3, *pipeline.latent_shape) and c.forecast.shape == (3, 2, 8, 8)
        assert (c.residual_ratio is None) == (c.cycle == 2)
        assert c.state.cycle == c.cycle + 1 and c.state.history.shape[1] == min(c.cycle + 1, K - 1)
        torch.testing.assert_close(c.state.history[:, -1], c.latents)  # the analysis is carried
    np.testing.assert_allclose(out[-1].analysis, pipeline.decode(out[-1].latents[:, None])[:, 0])
    assert not np.allclose(out[1].analysis[0], out[1].analysis[1])  # members differ


def test_members_do_not_depend_on_their_batch(tiny):
    pipeline, fields = tiny
    operators = _operators(fields)
    together = _run(pipeline, operators, [0, 1, 2], batch_members=3, conditioning="mmps")
    alone = _run(pipeline, operators, [2], batch_members=1)
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.analysis[2], b.analysis[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("conditioning,lag", [("mmps", 1), ("inpaint", 1), ("mmps", 2)])
def test_causality_analysis_never_depends_on_later_observations(tiny, conditioning, lag):
    pipeline, fields = tiny
    operators = _operators(fields, seed=0)
    changed = operators[:3] + _operators(fields[::-1] + 5, seed=9)[3:]  # new values and positions after cycle 2
    changed[4] = None
    first = _run(pipeline, operators, [0, 1], conditioning=conditioning, lag=lag)
    second = _run(pipeline, changed, [0, 1], conditioning=conditioning, lag=lag)
    for k in range(3):
        np.testing.assert_array_equal(first[k].analysis, second[k].analysis)
    assert not np.allclose(first[3].analysis, second[3].analysis)
    reads = []

    def lazy():  # cycle k is read only when cycle k is computed: never ahead of the analyses
        for k, operator in enumerate(operators):
            reads.append(k)
            yield operator

    settings = PosteriorSettings(steps=2)
    for cycle in filter_members(pipeline, lazy(), [0], settings, conditioning=conditioning, lag=lag):
        assert reads[-1] == cycle.cycle


def test_resume_from_a_cycle_state_gives_the_same_members(tiny):
    """The plain filter (lag 1): a state stored as arrays resumes without the run's cycles."""
    pipeline, fields = tiny
    operators = _operators(fields)
    full = _run(pipeline, operators, [0, 1], forecasts=True, lag=1)
    state = FilterState.from_arrays(full[2].state.to_arrays())  # as a store would keep it
    exact = dataclasses.replace(state, history=state.history.double() / 3)  # a float64 prior's state: kept bit for bit
    assert torch.equal(FilterState.from_arrays(exact.to_arrays()).history, exact.history)
    resumed = _run(pipeline, operators[3:], [0, 1], forecasts=True, lag=1, state=state)
    assert [c.cycle for c in resumed] == [3, 4]
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a.analysis, b.analysis)
        np.testing.assert_array_equal(a.forecast, b.forecast)
    one = _run(pipeline, operators[3:], [1], forecasts=True, lag=1, state=full[2].state)  # a share of the members
    np.testing.assert_allclose(one[-1].analysis[0], full[-1].analysis[1], atol=1e-5)  # decoded alone: rounding
    with pytest.raises(LatentdaError, match=r"holds members \[0, 1\], not \[2\]"):
        _run(pipeline, operators[3:], [1, 2], lag=1, state=state)
    other = dataclasses.replace(state, history=state.history[:, :, :1])  # one latent channel: another model's
    with pytest.raises(LatentdaError, match="a state of another model"):
        _run(pipeline, operators[3:], [0, 1], lag=1, state=other)
    with pytest.raises(LatentdaError, match="1 times for 2 cycles"):  # resuming, times are cut as the cycles
        _run(pipeline, operators[3:], [0, 1], lag=1, state=state, times=[3.0])
    with pytest.raises(LatentdaError, match="3 times for 2 cycles"):  # the first cycles' times left in
        _run(pipeline, operators[3:], [0, 1], lag=1, state=state, times=[2.0, 3.0, 4.0])
    with pytest.raises(LatentdaError, match="cycle 4: 1 times for more cycles"):  # a lazy iterable outlives its times
        _run(pipeline, iter(operators[3:]), [0, 1], lag=1, state=state, times=[3.0])


def test_lagged_filter_samples_the_recent_states_again_and_resumes(tiny):
    """With lag 2 each cycle samples the previous state again with its own observations: the history
    keeps context + 1 states, its last two are the cycle's window ends, the one before is untouched;
    a state stored as arrays resumes bit-identically once given the run's cycles."""
    pipeline, fields = tiny
    operators = _operators(fields)
    K = pipeline.window
    out = _run(pipeline, operators, [0, 1], lag=2)
    for previous, c in zip(out, out[1:]):
        assert c.state.history.shape[1] == min(c.cycle + 1, K - 1) and len(c.state.recent) == 1
        torch.testing.assert_close(c.state.history[:, -1], c.latents)
        assert not torch.allclose(c.state.history[:, -2], previous.latents)  # sampled again
        if previous.state.history.shape[1] >= 2:  # older states are kept as they were
            torch.testing.assert_close(c.state.history[:, -3], previous.state.history[:, -2])
    arrays = out[2].state.to_arrays()
    with pytest.raises(LatentdaError, match="give the run's cycles"):
        FilterState.from_arrays(arrays)
    state = FilterState.from_arrays(arrays, operators)
    assert state.recent == [operators[2]]
    resumed = _run(pipeline, operators[3:], [0, 1], lag=2, state=state)
    for a, b in zip(out[3:], resumed):
        np.testing.assert_array_equal(a.analysis, b.analysis)
    with pytest.raises(LatentdaError, match="lag 1"):
        _run(pipeline, operators[3:], [0, 1], lag=1, state=state)


def test_initial_latents_and_split_cycles(tiny):
    pipeline, fields = tiny
    initial = pipeline.encode(fields[:3])[None]  # (1, 3, c, h, w): every member starts from it
    out = _run(pipeline, _operators(fields)[:2], [0, 1], initial=initial)
    assert out[0].state.history.shape[1] == min(4, pipeline.window - 1)
    window = ObservationOperator([ObservationGroup("u", [0], "identity", "grid",
                                                   np.where(np.arange(3)[:, None, None] == 1, np.nan, fields[:3, 0]), 0.1)])
    cycles = split_cycles(window)
    assert cycles[1] is None and all(c.length == 1 for c in (cycles[0], cycles[2]))
    np.testing.assert_array_equal(cycles[2].groups[0].values[0], fields[2, 0])
    joined = join_cycles(cycles)
    assert len(joined.groups) == 1 and joined.length == 3
    np.testing.assert_array_equal(joined.groups[0].values, window.groups[0].values)


def test_bad_arguments_fail_before_any_work(tiny):
    pipeline, fields = tiny
    settings = PosteriorSettings(steps=2)
    with pytest.raises(LatentdaError, match="context"):
        filter_members(pipeline, [], [0], settings, context=pipeline.window)
    with pytest.raises(LatentdaError, match="conditioning"):
        filter_members(pipeline, [], [0], settings, conditioning="nudging")
    with pytest.raises(LatentdaError, match="lag"):
        filter_members(pipeline, [], [0], settings, lag=pipeline.window)
    with pytest.raises(LatentdaError, match="context"):
        filter_members(pipeline, [], [0], settings, lag=2, context=pipeline.window - 1)
    with pytest.raises(LatentdaError, match="each once"):
        filter_members(pipeline, [], [0, 0], settings)
    long = ObservationOperator([ObservationGroup("u", [0], "identity", "grid", fields[:2, 0].astype(float), 0.1)])
    one = ObservationOperator([ObservationGroup("u", [0], "identity", "grid", fields[:1, 0].astype(float), 0.1)])
    with pytest.raises(LatentdaError, match="cycle 2: the observations cover 2 time steps.*split_cycles"):
        filter_members(pipeline, [one, None, long], [0], settings)  # a list: every cycle checked at the call
    with pytest.raises(LatentdaError, match="cycle 1: expected an ObservationOperator or None, got str"):
        filter_members(pipeline, [one, "obs.nc"], [0], settings)
    lazily = filter_members(pipeline, iter([one, long]), [0], settings)  # an iterator: each cycle as it is read
    assert next(lazily).cycle == 0
    with pytest.raises(LatentdaError, match="cycle 1: the observations cover 2"):
        next(lazily)


def _slow_linear_gaussian(window: int, cycles: int = 5, noise: float = 0.3):
    """A slow AR(1) system (correlation time 100 steps, 4 × 4 pixels), its exact prior over windows of
    ``window`` states, and ``cycles`` cycles observing 40 % of the pixels (new positions each cycle):
    (system, prior, operators, observation matrices, observed values)."""
    from latentda.data import FieldLayout
    from latentda.diffusion.denoiser import make_schedule
    from latentda.diffusion.settings import SamplerSettings
    from latentda.posterior.exact import ExactPrior
    from latentda.simulate.gaussian import GaussianSystem, _dataset

    system = GaussianSystem(size=4, variables=1, cutoff_wavenumber=1.5, correlation_time=100.0)
    truth = system.trajectory(cycles, np.random.default_rng(1))
    layout = FieldLayout.from_dataset(_dataset(truth[None].astype(np.float32), 0, system, cycles, {}, True).isel(trajectory=0))
    sampling = SamplerSettings(sampler="pc", steps=16, tau=0.5, sigma_start=20.0)
    prior = ExactPrior(system, layout, make_schedule(1e-3, 1e3), sampling, window=window)
    rng = np.random.default_rng(2)
    n = system.size**2
    operators, rows, values = [], [], []
    for k in range(cycles):
        mask = rng.uniform(size=(4, 4)) < 0.4
        observed = np.where(mask, truth[k, 0] + noise * rng.standard_normal((4, 4)), np.nan)[None]
        operators.append(ObservationOperator([ObservationGroup("u", [0], "identity", "grid", observed, noise)]))
        rows.append(np.eye(n)[mask.ravel()])
        values.append(observed[0][mask])
    return system, prior, operators, rows, values


def test_linear_gaussian_filter_against_closed_forms():
    """With the exact prior of a slow AR(1) system (window 2) the ensemble follows the exact recursion of
    the scheme (mean within sampling error, variance within 20 %); that recursion is not the Kalman
    filter's, and the ensemble mean is told apart from the Kalman mean (module docstring)."""
    noise, members, slack = 0.3, 64, 0.05
    system, prior, operators, rows, values = _slow_linear_gaussian(window=2, noise=noise)
    scheme = _scheme_closed_form(system, rows, values, noise, slack, window=2, lag=1, context=1)
    kalman = _kalman_filter(system, rows, values, noise)
    settings = PosteriorSettings(iterations=24, batch_members=members)  # 24 ≥ the solve's size: exact
    out = list(filter_members(prior, operators, list(range(members)), settings, seed=0, condition_noise=slack))
    _assert_ensemble_follows(out, scheme, members)
    sampling_std = np.sqrt(np.diag(scheme[-1][1]) / members)
    ensemble_mean = out[-1].analysis.reshape(members, -1).mean(0)
    assert np.sqrt((((ensemble_mean - kalman[-1][0]) / sampling_std) ** 2).mean()) > 2.0
    assert np.trace(scheme[-1][1]) > 1.5 * np.trace(kalman[-1][1])  # the spread the scheme pays


def _kalman_filter(system, rows, values, noise):
    """The Kalman filter of the AR(1) system x_{k+1} = A x_k + w (A = C₁C₀⁻¹, Q = C₀ − A C₀ Aᵀ), from the
    stationary law, observed by rows[k] with values[k] and noise std ``noise``: (mean, covariance) per cycle."""
    n = system.size**2
    C0, C1 = system.covariance_matrix(0), system.covariance_matrix(1)
    A = C1 @ np.linalg.inv(C0)
    Q = C0 - A @ C0 @ A.T
    out = []
    for k, (H, y) in enumerate(zip(rows, values)):
        forecast, forecast_cov = (np.zeros(n), C0) if k == 0 else (A @ mean, A @ cov @ A.T + Q)
        gain = forecast_cov @ H.T @ np.linalg.inv(H @ forecast_cov @ H.T + noise**2 * np.eye(len(y)))
        mean, cov = forecast + gain @ (y - H @ forecast), forecast_cov - gain @ H @ forecast_cov
        out.append((mean, cov))
    return out


def _assert_ensemble_follows(cycles, law, members):
    """Every cycle's analysis ensemble has the law's mean (within sampling error) and variance (within 20 %)."""
    for cycle, (m, P) in zip(cycles, law, strict=True):
        ensemble = cycle.analysis.reshape(members, -1).astype(np.float64)
        sampling_std = np.sqrt(np.diag(P) / members)
        assert np.sqrt((((ensemble.mean(0) - m) / sampling_std) ** 2).mean()) < 1.6
        assert 0.8 < ensemble.var(0, ddof=1).sum() / np.trace(P) < 1.2


def _scheme_closed_form(system, rows, values, noise, slack, window, lag, context, inflation=1.0):
    """The exact law of one member of the filter (module docstring) for the stationary Gaussian prior
    (with ``inflation`` τ: covariance τ² Σ):
    the member's history (its last context + lag − 1 states) is Gaussian, and each cycle maps it
    linearly (the window posterior's gain on the conditioning states and the observations) plus
    independent noise (that posterior's covariance). Returns the analysis mean and covariance per cycle."""
    n = system.size**2
    lagged = [system.covariance_matrix(d) for d in range(window)]
    prior = np.block([[lagged[i - j] if i >= j else lagged[j - i].T for j in range(window)] for i in range(window)])
    prior = inflation**2 * prior
    keep = context + lag - 1
    mean, cov, recent, out = np.zeros(0), np.zeros((0, 0)), 0, []
    for k, (H, y) in enumerate(zip(rows, values)):
        stored = len(mean) // n
        kept = stored - recent  # states before the ones sampled again
        observed = recent + 1
        conditioning = min(kept, context, window - observed)
        start = window - observed - conditioning  # window position of the first conditioning state
        blocks, noises, ys = [], [], []
        for c in range(conditioning):  # latent identity on the conditioning states (slack σ_c)
            row = np.zeros((n, window * n))
            row[:, (start + c) * n:(start + c + 1) * n] = np.eye(n)
            blocks.append(row)
            noises.append(np.full(n, slack**2 * system.variance))
        for j in range(observed):  # cycle k − recent + j observes window position K − observed + j
            Hj = rows[k - recent + j]
            row = np.zeros((len(Hj), window * n))
            row[:, (window - observed + j) * n:(window - observed + j + 1) * n] = Hj
            blocks.append(row)
            noises.append(np.full(len(Hj), noise**2))
            ys.append(values[k - recent + j])
        B, N = np.vstack(blocks), np.diag(np.concatenate(noises))
        gain = (prior @ B.T @ np.linalg.inv(B @ prior @ B.T + N))[(window - observed) * n:]
        new_cov = prior[(window - observed) * n:, (window - observed) * n:] - gain @ (B @ prior)[:, (window - observed) * n:]
        select = np.zeros((conditioning * n, stored * n))  # history → its conditioning states
        select[:, (kept - conditioning) * n:kept * n] = np.eye(conditioning * n)
        M = np.vstack([np.eye(stored * n)[: kept * n], gain[:, : conditioning * n] @ select])
        mean = M @ mean + np.concatenate([np.zeros(kept * n), gain[:, conditioning * n:] @ np.concatenate(ys)])
        cov = M @ cov @ M.T
        cov[kept * n:, kept * n:] += new_cov
        mean, cov = mean[-keep * n:], cov[-keep * n:, -keep * n:]
        recent = min(lag - 1, recent + 1)
        out.append((mean[-n:], cov[-n:, -n:]))
    return out


def test_lagged_filter_against_its_closed_form():
    """Lag 2 on a slow AR(1) system with the exact prior (window 3): the ensemble follows the exact law
    of the lagged scheme (mean within sampling error, variance within 20 %), and that law is closer to
    the Kalman filter's than the lag-1 scheme's: re-sampling the previous state with its observations
    lets y_k revise it (module docstring)."""
    noise, members, slack = 0.3, 64, 0.05
    system, prior, operators, rows, values = _slow_linear_gaussian(window=3, noise=noise)
    lagged = _scheme_closed_form(system, rows, values, noise, slack, window=3, lag=2, context=1)
    plain = _scheme_closed_form(system, rows, values, noise, slack, window=3, lag=1, context=1)
    mk = _kalman_filter(system, rows, values, noise)[-1][0]
    settings = PosteriorSettings(iterations=40, batch_members=members)  # ≥ the solve's size: exact
    out = list(filter_members(prior, operators, list(range(members)), settings, seed=0, condition_noise=slack,
                              lag=2, context=1))
    _assert_ensemble_follows(out, lagged, members)
    assert np.trace(lagged[-1][1]) < np.trace(plain[-1][1])
    assert np.abs(lagged[-1][0] - mk).mean() < np.abs(plain[-1][0] - mk).mean()


def test_known_history_filter_against_its_closed_form():
    """conditioning known (the prior's own conditional given the clean history, here the exact Gaussian
    one): lag 2, context 1 with window 4, so the window is laid out history first, the two new states
    after it and a last state sampled and dropped. The ensemble follows the scheme's exact law with no
    slack (σ_c → 0), whose spread the 20 % tells apart from the mmps scheme's with a wide slack σ_c = 1
    (narrower here: a slow system's loose history lets each cycle's observations pull harder)."""
    noise, members = 0.3, 64
    system, prior, operators, rows, values = _slow_linear_gaussian(window=4, noise=noise)
    exact = _scheme_closed_form(system, rows, values, noise, 1e-4, window=4, lag=2, context=1)
    loose = _scheme_closed_form(system, rows, values, noise, 1.0, window=4, lag=2, context=1)
    settings = PosteriorSettings(iterations=40, batch_members=members)
    out = list(filter_members(prior, operators, list(range(members)), settings, seed=0, conditioning="known",
                              lag=2, context=1))
    _assert_ensemble_follows(out, exact, members)
    assert np.trace(exact[-1][1]) > 1.25 * np.trace(loose[-1][1])


def test_inflated_prior_filter_against_its_closed_form():
    """``prior_inflation`` τ = 1.5 samples with the prior inflated by τ (for the Gaussian system
    N(0, τ²Σ): latentda.posterior.prior.InflatedDenoiser): the ensemble follows the scheme's exact law under that
    prior (mean within sampling error, variance within 20 %), whose spread the 20 % tells apart from
    the plain prior's."""
    noise, members, slack, tau = 0.3, 64, 0.05, 1.5
    system, prior, operators, rows, values = _slow_linear_gaussian(window=2, cycles=3, noise=noise)
    inflated = _scheme_closed_form(system, rows, values, noise, slack, window=2, lag=1, context=1, inflation=tau)
    plain = _scheme_closed_form(system, rows, values, noise, slack, window=2, lag=1, context=1)
    settings = PosteriorSettings(iterations=24, batch_members=members, prior_inflation=tau)
    out = list(filter_members(prior, operators, list(range(members)), settings, seed=0, condition_noise=slack, lag=1))
    _assert_ensemble_follows(out, inflated, members)
    assert all(np.trace(a[1]) > 1.3 * np.trace(b[1]) for a, b in zip(inflated, plain))


@pytest.mark.parametrize("lag", [1, 2])
def test_filter_command_writes_cycles_and_resumes_bit_identical(tmp_path, monkeypatch, capsys, lag):
    """``latentda filter``: one analysis per observation time, written cycle by cycle; a run stopped
    after two cycles — by Ctrl-C (lag 1), by a failure outside the inputs such as running out of memory
    (lag 2) — keeps them and resumes from its saved member states to the uninterrupted result (with
    a lag too: the resumed run re-reads the observations of the cycles it samples again)."""
    from conftest import make_observed_pipeline
    from latentda import cli
    from latentda.data import open_dataset
    from latentda.posterior import filtering

    _, truth, truth_path, observations = make_observed_pipeline(tmp_path, times=6)
    run = ["filter", "--pipeline", str(tmp_path / "pipeline"), "--observations", str(observations), "--members", "2",
           "--steps", "2", "--iterations", "1", "--seed", "3", "--lag", str(lag), "--quiet"]
    assert cli.main(run + ["--out", str(tmp_path / "whole.zarr")]) == 0
    whole = open_dataset(tmp_path / "whole.zarr")
    assert dict(whole["u"].sizes) == {"realization": 2, "time": 6, "y": 8, "x": 8}
    np.testing.assert_allclose(whole["time"].values, truth["time"].values)
    assert whole.attrs["latentda_conditioning"] == "mmps" and np.isfinite(whole["u"].values).all()
    assert whole.attrs.get("latentda_lag") == (None if lag == 1 else str(lag))

    # stopped while sampling the third cycle (one call per member and cycle)
    real = interrupt_filter_at(monkeypatch, 5, KeyboardInterrupt if lag == 1 else RuntimeError("out of memory (simulated)"))
    out = tmp_path / "cut.zarr"
    if lag == 1:
        assert cli.main(run + ["--out", str(out)]) == 130  # "interrupted", as after Ctrl-C
        assert "the finished cycles are kept in " in capsys.readouterr().err  # and how to continue
    else:
        with pytest.raises(RuntimeError, match="out of memory") as failure:
            cli.main(run + ["--out", str(out)])
        assert any("2 finished cycle(s) kept in" in note for note in failure.value.__notes__)
    assert not out.exists() and (tmp_path / "cut.zarr.partial").exists()
    assert cli.main(run + ["--out", str(out)]) == 2  # an interrupted run is continued only with --resume
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(filtering, "_window_sample", real)
    assert cli.main(run + ["--out", str(out), "--resume"]) == 0
    assert "resuming: 2 cycle(s) already complete" in capsys.readouterr().out
    np.testing.assert_array_equal(open_dataset(out)["u"].values, whole["u"].values)
    assert not (tmp_path / "cut.zarr.partial").exists()
    assert cli.main(["evaluate", "--prediction", str(out), "--truth", str(truth_path), "--observations",
                     str(observations)]) == 0


def test_filter_command_deals_members_over_two_processes(tmp_path, monkeypatch):
    """torchrun, 2 CPU processes: members 0, 2 | 1, each cycle gathered and written by the main
    process, give the one-process filter (up to float rounding); a run interrupted in one process
    resumes under two from its saved member states (the other process reads them from the store)."""
    from conftest import make_observed_pipeline, run_torchrun
    from latentda import cli
    from latentda.data import open_dataset

    _, _, _, observations = make_observed_pipeline(tmp_path, times=5)
    run = ["filter", "--pipeline", str(tmp_path / "pipeline"), "--observations", str(observations),
           "--members", "3", "--steps", "2", "--iterations", "1", "--seed", "3", "--lag", "2", "--quiet"]
    assert cli.main(run + ["--out", str(tmp_path / "one.zarr")]) == 0
    one = open_dataset(tmp_path / "one.zarr")["u"].values
    run_torchrun(["-m", "latentda.cli", *run, "--out", str(tmp_path / "two.zarr")])
    two = open_dataset(tmp_path / "two.zarr")["u"].values
    # identical up to float rounding (the processes run 1 thread each, the single one 2: other reduction order)
    np.testing.assert_allclose(two, one, atol=1e-4 * np.abs(one).max())

    interrupt_filter_at(monkeypatch, 3)  # Ctrl-C while sampling the third cycle (one call per cycle: 3 members, one batch)
    cut = ["--out", str(tmp_path / "cut.zarr"), "--batch-members", "3"]
    assert cli.main(run + cut) == 130
    resumed = run_torchrun(["-m", "latentda.cli", *run, *cut, "--resume"])
    assert "resuming: 2 cycle(s) already complete" in resumed.stdout
    np.testing.assert_allclose(open_dataset(tmp_path / "cut.zarr")["u"].values, one, atol=1e-4 * np.abs(one).max())
    assert not (tmp_path / "cut.zarr.partial").exists()


def test_pipeline_filter_from_an_initial_ensemble_and_a_table(tmp_path, monkeypatch):
    """The Python API: start from a reanalysis' members (member m from member m), observations as a table;
    the filter's own context of the initial states is used, and they must end one step before the first cycle."""
    import pandas as pd

    from conftest import make_observed_pipeline
    from latentda.data import open_dataset
    from latentda.posterior import filtering

    pipeline, truth, _, observations = make_observed_pipeline(tmp_path, times=6)
    pipeline.set_progress_bar_config(disable=True)
    options = {"steps": 2, "iterations": 1}
    initial = pipeline.reanalyze(open_dataset(observations).isel(time=slice(0, 4)), members=2, **options)
    table = pd.DataFrame({"time": truth["time"].values[4:6], "y": [1.0, 2.5], "x": [0.3, 4.0], "variable": "u",
                          "value": [0.2, -0.4], "noise_std": 0.1})
    analyses = pipeline.filter(table, members=2, initial=initial, **options)
    assert dict(analyses["u"].sizes) == {"realization": 2, "time": 2, "y": 8, "x": 8}
    assert analyses.attrs["latentda_lag"] == str(pipeline.window // 2) == "2"  # the default lag: ⌊K/2⌋
    np.testing.assert_allclose(analyses["time"].values, truth["time"].values[4:6])
    again = pipeline.filter(table, members=2, initial=initial.isel(realization=[1, 0]), **options)
    assert not np.array_equal(again["u"].values[0], analyses["u"].values[0])  # member 0 follows initial member 0
    with pytest.raises(LatentdaError, match="context"):
        pipeline.filter(table, members=2, context=9, **options)
    with pytest.raises(LatentdaError, match="initial state followed by the first cycle"):  # times 0–2, then 4
        pipeline.filter(table, members=2, initial=initial.isel(time=slice(0, 3)), **options)
    starts, real = [], filtering.filter_members
    monkeypatch.setattr(filtering, "filter_members", lambda *a, **k: (starts.append(a[8]), real(*a, **k))[1])
    pipeline.filter(table, members=2, initial=initial, context=3, lag=1, **options)
    assert starts[-1].shape[:2] == (2, 3)  # the filter's context of 3 states, not a forecast's default


def test_filter_resume_reads_the_same_initial_states(tmp_path, monkeypatch):
    """A filter from initial states records the fingerprint of the states it reads (its last `context`):
    resumed with another of those it is refused and loses nothing; a change to an earlier, unread state is
    not a change, and the resumed run equals the uninterrupted one."""
    from conftest import make_observed_pipeline
    from latentda import cli
    from latentda.data import open_dataset
    from latentda.posterior import filtering
    from latentda.runs import input_fingerprint

    pipeline, _, _, observations = make_observed_pipeline(tmp_path, times=6)
    pipeline.set_progress_bar_config(disable=True)
    options = {"members": 2, "steps": 2, "iterations": 1}
    initial = pipeline.reanalyze(open_dataset(observations).isel(time=slice(0, 4)), **options).load()
    later = open_dataset(observations).isel(time=slice(4, 6))
    whole = pipeline.filter(later, initial=initial, out=tmp_path / "whole.zarr", **options)
    read = pipeline.window - pipeline.window // 2  # the default context: K − lag = 2 of the 4 initial states
    assert whole.attrs["latentda_initial_sha256"] == input_fingerprint(initial.isel(time=slice(-read, None)))

    real = interrupt_filter_at(monkeypatch, 2)  # Ctrl-C while sampling the second cycle (one call per cycle: 2 members)
    out = tmp_path / "cut.zarr"
    with pytest.raises(KeyboardInterrupt):
        pipeline.filter(later, initial=initial, out=out, **options)
    monkeypatch.setattr(filtering, "_window_sample", real)
    partial = tmp_path / "cut.zarr.partial"
    kept = open_dataset(partial)["u"].isel(time=0).values.copy()
    read_state, unread_state = initial.copy(deep=True), initial.copy(deep=True)
    read_state["u"].values[:, -1] += 1.0  # the last state: the filter's history
    unread_state["u"].values[:, 0] += 1.0  # before the last `context`: never read
    with pytest.raises(LatentdaError, match=r"other settings \(latentda_initial_sha256\); resume with the obs"):
        pipeline.filter(later, initial=read_state, out=out, resume=True, **options)
    np.testing.assert_array_equal(open_dataset(partial)["u"].isel(time=0).values, kept)  # nothing lost
    resumed = pipeline.filter(later, initial=unread_state, out=out, resume=True, **options)
    np.testing.assert_array_equal(resumed["u"].values, whole["u"].values)
    initial.to_netcdf(tmp_path / "initial.nc")  # the command records its files too, as the forecast does
    open_dataset(observations).isel(time=slice(4, 6)).to_netcdf(tmp_path / "later.nc")
    assert cli.main(["filter", "--pipeline", str(tmp_path / "pipeline"), "--observations", str(tmp_path / "later.nc"),
                     "--initial", str(tmp_path / "initial.nc"), "--members", "2", "--steps", "2", "--iterations", "1",
                     "--quiet", "--out", str(tmp_path / "cli.zarr")]) == 0
    recorded = open_dataset(tmp_path / "cli.zarr").attrs
    assert recorded["initial"] == str((tmp_path / "initial.nc").resolve())
    assert recorded["latentda_initial_sha256"] == whole.attrs["latentda_initial_sha256"]


def test_each_cycle_keeps_only_the_points_it_observes():
    """Drifting buoys: one group over every position ever seen (NaN where a buoy is not at it). Each cycle
    keeps only its own points, their values and per-entry noise, so its work does not grow with the window;
    its (y, σ) are the window's at that step, and the cycles joined back observe the same values."""
    rng = np.random.default_rng(0)
    values = np.full((3, 6), np.nan)
    values[0, :2], values[1, 2:5], values[2, [1, 5]] = rng.standard_normal(2), rng.standard_normal(3), rng.standard_normal(2)
    noise = np.broadcast_to(np.arange(1, 7) / 10, (3, 6))
    group = ObservationGroup("buoys", [0], "identity", "points", values, noise.copy(), points=rng.uniform(0, 7, (6, 2)))
    window = ObservationOperator([group])
    cycles = split_cycles(window)
    assert [c.groups[0].points.shape[0] for c in cycles] == [2, 3, 2]
    np.testing.assert_array_equal(cycles[2].groups[0].points, group.points[[1, 5]])
    for t, cycle in enumerate(cycles):
        y, sigma = (np.asarray(a) for a in cycle.observed(representation=False))
        observed = ~np.isnan(values[t])
        np.testing.assert_array_equal(y, values[t][observed])
        np.testing.assert_array_equal(sigma, noise[t][observed])
    joined = join_cycles(cycles)  # the smoother's window from what the filter assimilated: the same (y, σ)
    y_joined, sigma_joined = (np.asarray(a) for a in joined.observed(representation=False))
    y_whole, sigma_whole = (np.asarray(a) for a in window.observed(representation=False))
    np.testing.assert_array_equal(np.sort(y_joined), np.sort(y_whole))
    np.testing.assert_array_equal(np.sort(sigma_joined), np.sort(sigma_whole))


def _moving_table(layout, time_step: float, states: int, seed: int = 0):
    """Drifting positions: per state three new u positions (σ per row) and one v position read twice
    (two independent rows, one σ for all v), nothing at state 2."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for k in (k for k in range(states) if k != 2):
        for y, x in rng.uniform(0, 7.5, (3, 2)):
            rows.append({"time": k * time_step, "y": y, "x": x, "variable": "u", "value": rng.normal(),
                         "noise_std": rng.uniform(0.1, 0.3)})
        y, x = rng.uniform(0, 7.5, 2)
        rows += [{"time": k * time_step, "y": y, "x": x, "variable": "v", "value": rng.normal(), "noise_std": 0.2}
                 for _ in range(2)]
    return pd.DataFrame(rows)


def test_a_table_is_read_cycle_by_cycle_as_its_dataset(tiny):
    """A table of moving positions is read state by state (no cycles × positions array): each cycle's
    operator — points, y, σ, representation error included — is the one split from the table's dataset,
    and the filter's analyses are bit-identical either way."""
    from latentda.observe import TableWindow, table_to_dataset

    pipeline, _ = tiny
    table = _moving_table(pipeline.layout, pipeline.time_step, CYCLES)
    time, cycles, read = pipeline.filter_cycles(table)
    dataset = table_to_dataset(table, pipeline.layout, time_step=pipeline.time_step)
    time_whole, split, _ = pipeline.filter_cycles(dataset)
    np.testing.assert_array_equal(time.values, time_whole.values)
    assert [c is None for c in cycles] == [c is None for c in split] == [False, False, True, False, False]
    assert read[2] is None and all(d.sizes["u_point"] == 3 for d in read if d is not None)  # only each state's points
    for mine, theirs in zip(cycles, split):
        if mine is None:
            continue
        assert [g.name for g in mine.groups] == [g.name for g in theirs.groups] == ["u", "v"]
        for a, b in zip(mine.groups, theirs.groups):
            np.testing.assert_array_equal(a.points, b.points)
        for a, b in zip(mine.observed(), theirs.observed()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    options = {"members": 2, "steps": 2, "iterations": 1}
    torch.testing.assert_close(pipeline.filter(table, **options)["u"].values, pipeline.filter(dataset, **options)["u"].values,
                               rtol=0, atol=0)
    longer, cycles = pipeline.filter_cycles(table, TableWindow(window_start="0", window_length=CYCLES + 2))[:2]
    np.testing.assert_allclose(longer.values, pipeline.time_step * np.arange(CYCLES + 2))
    assert cycles[CYCLES:] == [None, None]  # forecast steps
    with pytest.raises(LatentdaError, match="tabular"):
        pipeline.filter_cycles(dataset, TableWindow(window_length=3))
    with pytest.raises(LatentdaError, match="table_window: expected a latentda.observe.TableWindow, got int"):
        pipeline.filter(table, table_window=5, **options)


def test_a_table_on_the_fixed_mask_is_read_as_its_dataset(tiny):
    """u masked in a corner (land): a state whose only u row is there keeps its v row (u left out), a state
    observing only the corner is a forecast step, as in the table's dataset; only a table wholly on the
    mask is an error."""
    import pandas as pd

    from latentda.observe import table_to_dataset

    pipeline, _ = tiny
    mask = np.ones((2, 8, 8), dtype=bool)
    mask[0, :4, :4] = False
    masked = copy.copy(pipeline)
    masked.layout = dataclasses.replace(pipeline.layout, mask=mask)
    step = pipeline.time_step
    rows = [(0, "u", 0.8, 0.8), (1, "u", 0.8, 0.8), (1, "v", 1.0, 1.0), (2, "u", 3.5, 3.5), (3, "u", 3.5, 3.5)]  # y, x: coordinates
    table = pd.DataFrame([{"time": k * step, "y": y, "x": x, "variable": v, "value": 0.1, "noise_std": 0.2}
                          for k, v, y, x in rows])
    with pytest.warns(UserWarning, match="2 observation.s. read pixels of the model's fixed mask"):
        _, cycles, _ = masked.filter_cycles(table)
    with pytest.warns(UserWarning, match="fixed mask"):
        _, split, _ = masked.filter_cycles(table_to_dataset(table, pipeline.layout, time_step=step))
    assert cycles[0] is None and split[0] is None
    assert [g.name for g in cycles[1].groups] == [g.name for g in split[1].groups] == ["v"]
    for mine, theirs in zip(cycles[1:], split[1:]):
        for a, b in zip(mine.observed(), theirs.observed()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    analyses = masked.filter(table, members=2, steps=2, iterations=1)
    assert np.isfinite(analyses["v"].values).all()
    with pytest.raises(LatentdaError, match="all 2 observations read pixels of the model's fixed mask"):
        masked.filter_cycles(table.iloc[:2])


def test_filter_command_reads_a_csv_table_on_its_window_and_resumes(tmp_path, monkeypatch, capsys):
    """``latentda filter`` with a CSV of moving positions: the window options apply (two more states:
    forecast steps), an interrupted run resumes to the uninterrupted result (the table's cycles are
    fingerprinted), another table is refused on resume, and the window options are refused for a file."""
    from conftest import make_observed_pipeline
    from latentda import cli
    from latentda.data import open_dataset

    pipeline, _, _, observations = make_observed_pipeline(tmp_path, times=6)
    table = _moving_table(pipeline.layout, pipeline.time_step, CYCLES)
    table.to_csv(tmp_path / "obs.csv", index=False)
    run = ["filter", "--pipeline", str(tmp_path / "pipeline"), "--observations", str(tmp_path / "obs.csv"), "--members", "2",
           "--steps", "2", "--iterations", "1", "--window-length", str(CYCLES + 2), "--quiet"]
    assert cli.main(run + ["--out", str(tmp_path / "whole.zarr")]) == 0
    whole = open_dataset(tmp_path / "whole.zarr")["u"].values
    assert whole.shape == (2, CYCLES + 2, 8, 8) and np.isfinite(whole).all()

    interrupt_filter_at(monkeypatch, 5)  # Ctrl-C in the third cycle (one call per member and cycle)
    cut = run + ["--out", str(tmp_path / "cut.zarr")]
    assert cli.main(cut) == 130
    table.assign(value=table["value"] + 1).to_csv(tmp_path / "obs.csv", index=False)
    assert cli.main(cut + ["--resume"]) == 2
    assert "observations" in capsys.readouterr().err
    table.to_csv(tmp_path / "obs.csv", index=False)
    monkeypatch.undo()
    assert cli.main(cut + ["--resume"]) == 0
    np.testing.assert_array_equal(open_dataset(tmp_path / "cut.zarr")["u"].values, whole)

    file_run = ["filter", "--pipeline", str(tmp_path / "pipeline"), "--observations", str(observations),
                "--members", "2", "--window-length", "3", "--out", str(tmp_path / "file.zarr"), "--quiet"]
    assert cli.main(file_run) == 2
    assert "tabular" in capsys.readouterr().err and not (tmp_path / "file.zarr").exists()


def test_an_interrupted_table_run_resumes_with_its_table_only(tiny, tmp_path, monkeypatch):
    """A filter of a table, interrupted: a run of other observations is refused and keeps its cycles; resumed
    with its table it completes to the uninterrupted result."""
    import zarr

    pipeline, _ = tiny
    table = _moving_table(pipeline.layout, pipeline.time_step, CYCLES)
    options = {"members": 2, "steps": 2, "iterations": 1}
    whole = pipeline.filter(table, **options)["u"].values
    out = tmp_path / "cut.zarr"
    interrupt_filter_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        pipeline.filter(table, out=out, **options)
    monkeypatch.undo()
    partial = zarr.open_group(str(out) + ".partial", mode="r+")
    recorded = partial.attrs["latentda_observations_sha256"]
    partial.attrs["latentda_observations_sha256"] = "0123456789abcdef"  # other observations
    with pytest.raises(LatentdaError, match="other settings .latentda_observations_sha256"):
        pipeline.filter(table, out=out, resume=True, **options)
    partial.attrs["latentda_observations_sha256"] = recorded
    resumed = pipeline.filter(table, out=out, resume=True, **options)
    np.testing.assert_array_equal(resumed["u"].values, whole)
    assert resumed.attrs["latentda_observations_sha256"] == recorded
