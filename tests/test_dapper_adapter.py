"""The DAPPER adapter (latentda.integrations.dapper): a tiny HMM on the tiny pipeline's 2×8×8 fields,
LatentDA beside EnKF in an xpList, statistics for every cycle, the filter never reading a future
observation, the smoother, and the translation of DAPPER observation operators."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("dapper", reason="DAPPER is an optional extra: pip install 'latentda[dapper]'")

import dapper as dpr  # noqa: E402
import dapper.mods as modelling  # noqa: E402
import dapper.stats  # noqa: E402
from dapper.da_methods import EnKF  # noqa: E402
from dapper.tools.localization import nd_Id_localization  # noqa: E402

from conftest import make_tiny_pipeline, run_torchrun  # noqa: E402
from latentda.data.statistics import Statistics  # noqa: E402
from latentda.errors import LatentdaError  # noqa: E402
from latentda.observe.operators import ObservationOperator  # noqa: E402
from latentda.posterior.filtering import filter_members  # noqa: E402
from latentda.integrations.dapper import LatentDA, forecast_skill, observation_matrix, observation_operator  # noqa: E402

NX = 2 * 8 * 8
OBSERVATIONS = 5  # Ko + 1
N_MEMBERS = 3
MODES = {"filter": {}, "smoother": {"mode": "smoother"}, "model": {"dynamics": "model"},  # the runs dealt over processes
         "model-increment": {"dynamics": "model", "increment": True, "background_factor": 2, "spin_up": 1, "history": "analyses"},
         "model-hybrid": {"dynamics": "model", "increment": True, "ensemble_update": True, "infl": 1.1}}


def _obs_at(ko: int) -> modelling.Operator:
    """Even cycles: 24 grid points, new ones every cycle; odd cycles: means of pixel pairs of u and of v."""
    if ko % 2 == 0:
        points = np.sort(np.random.default_rng(ko).choice(NX, 24, replace=False))
        return modelling.Operator(**modelling.partial_Id_Obs(NX, points), noise=0.01)
    rows = np.zeros((16, NX))
    for r in range(16):
        start = 4 * r if r < 8 else 64 + 4 * (r - 8)
        rows[r, start : start + 2] = 0.5
    return modelling.Operator(M=16, model=lambda x: x @ rows.T, noise=np.full(16, 0.04))


def tiny_hmm():
    tseq = modelling.Chronology(dt=1, dko=1, Ko=OBSERVATIONS - 1, BurnIn=0)
    dynamics = {"M": NX, "model": lambda x, t, dt: 0.9 * np.roll(x, 1, axis=-1), "noise": 0}
    return modelling.HiddenMarkovModel(dynamics, {"time_dependent": _obs_at}, tseq, modelling.GaussRV(C=1.0, M=NX))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pipeline, _ = make_tiny_pipeline(tmp_path_factory.mktemp("dapper") / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    pipeline.time_step = 1.0  # the tiny HMM's time between observations (dto)
    HMM = tiny_hmm()
    dpr.set_seed(3)
    xx, yy = HMM.simulate()
    return pipeline, HMM, xx, yy


def _method(pipeline, **options):
    return LatentDA(pipeline=pipeline, **{"N": N_MEMBERS, "settings": {"steps": 2}, **options})


def statistics(xp) -> dict:
    """DAPPER's per-cycle rmse and spread of every series recorded (a, f, s), and the residual ratios."""
    out = {"residual_ratio": np.asarray(xp.stats.residual_ratio, dtype=np.float64)}
    for name, series in (("rmse", xp.stats.err.rms), ("spread", xp.stats.spread.rms)):
        for sub in ("a", "f", "s"):
            values = np.asarray(getattr(series, sub, np.nan), dtype=np.float64)
            if np.isfinite(values).any():
                out[f"{name}.{sub}"] = values
    return out


def test_in_an_xplist_beside_enkf(setup):
    """Launched by DAPPER beside EnKF (its twin experiment simulated under each xp's seed), LatentDA records
    every cycle, its statistics are those of the same method run alone on that truth (EnKF's run draws
    nothing of its members), its rmse.a is DAPPER's definition applied to its analysis mean, and the
    averages tabulate beside EnKF's."""
    pipeline, HMM, xx, yy = setup
    xps = dpr.xpList([EnKF("Sqrt", N=8), _method(pipeline)])
    for xp in xps:
        xp.seed = 7
    xps.launch(HMM, save_as=False, fail_gently=False, free=False)
    latent = xps[1]
    for sub in ("a", "f"):
        series = getattr(latent.stats.err.rms, sub)
        assert series.shape == (OBSERVATIONS,) and np.isfinite(series).all()  # every cycle assessed
    assert np.isfinite(latent.stats.spread.rms.a).all() and np.isfinite(latent.stats.residual_ratio).all()
    dpr.set_seed(7)
    truth, observed = HMM.simulate()
    alone = _method(pipeline)
    alone.assimilate(HMM, truth, observed)
    np.testing.assert_allclose(latent.stats.mu.a, alone.stats.mu.a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(latent.stats.residual_ratio, alone.stats.residual_ratio, rtol=1e-5)
    for ko, k in enumerate(HMM.tseq.kko):
        error = np.sqrt(np.mean((latent.stats.mu.a[ko] - truth[k]) ** 2))
        assert latent.stats.err.rms.a[ko] == pytest.approx(error, rel=1e-5)
    assert not np.allclose(latent.stats.err.rms.a, xps[0].stats.err.rms.a)  # two methods, two records
    assert latent.avrgs.err.rms.a.val == pytest.approx(np.mean(latent.stats.err.rms.a))  # no burn-in: every cycle
    table = xps.tabulate_avrgs(["rmse.a", "rmv.a"], colorize=False)
    assert "LatentDA" in table and "EnKF" in table


class _Spy(np.ndarray):
    """An observation sequence that records which yy[ko] are read."""

    reads: list = []

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            _Spy.reads.append(int(index))
        return super().__getitem__(index)


@pytest.mark.parametrize("lag, dynamics", [(1, "prior"), (2, "prior"), (1, "model"), (2, "model")])
def test_filter_never_reads_the_future(setup, monkeypatch, lag, dynamics):
    pipeline, HMM, xx, yy = setup
    _method = (lambda pipeline, **options: globals()["_method"](pipeline, dynamics=dynamics, **options))
    assessed, smoothed = [], []
    real = dapper.stats.Stats.assess

    def spying(self, k, ko=None, faus=None, **kwargs):
        if faus == "s":  # the lagged filter's fixed-lag smoother: state ko given yy[0..ko + lag − 1]
            smoothed.append((ko, max(_Spy.reads, default=-1)))
        else:
            assessed.append((ko, max(_Spy.reads, default=-1)))
        return real(self, k, ko, faus, **kwargs)

    monkeypatch.setattr(dapper.stats.Stats, "assess", spying)
    _Spy.reads = []
    xp = _method(pipeline, lag=lag)
    xp.assimilate(HMM, xx, yy.view(_Spy))
    assert assessed[0] == (None, -1)  # the start: no observation read
    assert {ko for ko, _ in assessed[1:]} == set(range(OBSERVATIONS))
    for ko, newest in assessed[1:]:
        assert newest == ko  # statistics at cycle ko were computed having read yy[0..ko] only
    if lag == 1 or dynamics == "model":  # the filter with the HMM's model records no s series
        assert not smoothed
    else:
        assert sorted(ko for ko, _ in smoothed) == list(range(OBSERVATIONS))
        for ko, newest in smoothed:
            assert newest == min(ko + lag - 1, OBSERVATIONS - 1)

    # and poisoned future observations change nothing before them
    monkeypatch.setattr(dapper.stats.Stats, "assess", real)
    poisoned = yy.copy()
    for ko in range(3, OBSERVATIONS):
        poisoned[ko] = poisoned[ko] + 1e3
    first, second = _method(pipeline, lag=lag), _method(pipeline, lag=lag)
    first.assimilate(HMM, xx, yy)
    second.assimilate(HMM, xx, poisoned)
    np.testing.assert_array_equal(first.stats.mu.a[:3], second.stats.mu.a[:3])
    assert not np.allclose(first.stats.mu.a[3:], second.stats.mu.a[3:])
    if lag > 1 and dynamics == "prior":  # the smoother's state ko reads lag − 1 cycles ahead, no further
        np.testing.assert_array_equal(first.stats.mu.s[: 3 - lag + 1], second.stats.mu.s[: 3 - lag + 1])
        assert not np.allclose(first.stats.mu.s[3 - lag + 1 :], second.stats.mu.s[3 - lag + 1 :])


def test_lagged_filter_is_a_fixed_lag_smoother(setup):
    """lag 3: DAPPER keeps an s series (Lag = 2: the estimate of cycle ko reads y up to ko + 2, as EnKS's Lag); a state's smoothed estimate is its last sample, which at
    the last cycle is the analysis itself and before it differs from the analysis (revised by later
    observations)."""
    pipeline, HMM, xx, yy = setup
    xp = _method(pipeline, lag=3)
    assert xp.Lag == 2 and not hasattr(_method(pipeline, lag=1), "Lag")
    xp.assimilate(HMM, xx, yy)
    s, a = xp.stats.mu.s, xp.stats.mu.a
    assert np.isfinite(s).all() and np.isfinite(xp.stats.err.rms.s).all()
    np.testing.assert_allclose(s[-1], a[-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(s[:-1], a[:-1])


def test_filter_started_late_is_the_filter_on_the_later_cycles(setup):
    """start_cycle = s: yy[s:] only are read, cycles before s stay unassessed (NaN), and the analyses are
    those of the filter run from the start on the experiment that begins at cycle s (the same HMM with
    its observation operators and observations shifted by s); s may not pass DAPPER's first averaged cycle."""
    pipeline, HMM, xx, yy = setup
    start = 2
    burnt = modelling.HiddenMarkovModel(HMM.Dyn, {"time_dependent": _obs_at},  # averages cycles s, s + 1, …
                                        modelling.Chronology(dt=1, dko=1, Ko=OBSERVATIONS - 1, BurnIn=start), HMM.X0)
    _Spy.reads = []
    late = _method(pipeline, lag=2, start_cycle=start)
    late.assimilate(burnt, xx, yy.view(_Spy))
    assert min(_Spy.reads) == start
    assert np.isnan(late.stats.mu.a[:start]).all() and np.isnan(late.stats.err.rms.f[:start]).all()
    assert np.isfinite(late.stats.err.rms.a[start:]).all() and np.isfinite(late.stats.residual_ratio[start:]).all()

    tseq = modelling.Chronology(dt=1, dko=1, Ko=OBSERVATIONS - 1 - start, BurnIn=0)
    shifted = modelling.HiddenMarkovModel(HMM.Dyn, {"time_dependent": lambda ko: _obs_at(ko + start)}, tseq, HMM.X0)
    fresh = _method(pipeline, lag=2)
    fresh.assimilate(shifted, xx[start:], yy[start:])
    np.testing.assert_allclose(late.stats.mu.a[start:], fresh.stats.mu.a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(late.stats.residual_ratio[start:], fresh.stats.residual_ratio, rtol=1e-5)

    late.stats.average_in_time()  # DAPPER averages over the cycles after its burn-in: those the filter assessed
    assert late.avrgs.err.rms.a.val == pytest.approx(np.mean(late.stats.err.rms.a[start:]))
    with pytest.raises(LatentdaError, match="start_cycle 2 is after cycle 0, the first that DAPPER averages"):
        _method(pipeline, start_cycle=start).assimilate(HMM, xx, yy)  # no burn-in: cycles 0, 1 would be NaN
    with pytest.raises(LatentdaError, match="start_cycle 5 is past"):
        _method(pipeline, start_cycle=OBSERVATIONS).assimilate(HMM, xx, yy)
    for mode, value, message in (("filter", -1, "integer ≥ 0"), ("smoother", 2, "the filter's")):
        with pytest.raises(LatentdaError, match=message):
            _method(pipeline, mode=mode, start_cycle=value)


def test_smoother_records_smoothed_statistics(setup):
    pipeline, HMM, xx, yy = setup
    from latentda.posterior.filtering import join_cycles
    from latentda.posterior.reanalysis import posterior_members

    xp = _method(pipeline, mode="smoother")
    xp.assimilate(HMM, xx, yy, fail_gently=False)
    assert np.isfinite(xp.stats.err.rms.s).all() and np.isnan(xp.stats.err.rms.a).all()
    # each cycle k scores the reanalysis' state at k: the members drawn again, the same seed, on the joined window
    kko = HMM.tseq.kko
    window = join_cycles([None] + [xp._operator(HMM, ko, yy[ko]) for ko in range(len(kko))])
    members = np.stack([fields for _, fields, _ in posterior_members(pipeline, window, list(range(N_MEMBERS)),
                                                                      xp._posterior_settings(), xp.latent_seed)])
    for ko, k in enumerate(kko):
        mean = xp._to_state(members[:, ko + 1]).mean(axis=0)
        np.testing.assert_allclose(xp.stats.mu.s[ko], mean, rtol=1e-5, atol=1e-6)
        assert xp.stats.err.rms.s[ko] == pytest.approx(np.sqrt(np.mean((mean - xx[k]) ** 2)), rel=1e-5)
    xp.stats.average_in_time()
    assert np.isfinite(xp.avrgs.err.rms.s.val)
    with pytest.raises(LatentdaError, match="mode"):
        LatentDA(pipeline=pipeline, mode="bidirectional")


def test_an_xp_edited_after_it_was_made_runs_as_edited(setup):
    """DAPPER's xps are plain data edited before a launch: a lag or mode set afterwards is checked and gives the Lag (and
    the s series) of the method as it runs — that of one made with it; an ndarray state_index compares whole, so
    xpList(unique=True) and `xp in xps` work."""
    pipeline, HMM, xx, yy = setup
    edited, made = _method(pipeline, lag=1), _method(pipeline, lag=3)
    edited.lag = 3
    for xp in (edited, made):
        xp.assimilate(HMM, xx, yy)
    assert edited.Lag == made.Lag == 2
    np.testing.assert_array_equal(edited.stats.err.rms.s, made.stats.err.rms.s)
    back = _method(pipeline, lag=3)
    back.lag = 1
    back.assimilate(HMM, xx, yy)
    assert "Lag" not in back.__dict__ and np.isfinite(back.stats.err.rms.a).all()
    edited.N = 0
    with pytest.raises(LatentdaError, match="N must be an integer ≥ 2"):
        edited.assimilate(HMM, xx, yy)
    index = np.arange(NX)[::-1].copy()
    xps = dpr.xpList(unique=True)
    xps += _method(pipeline, state_index=index)
    xps += _method(pipeline, state_index=index.copy())
    assert len(xps) == 1 and xps[0].state_index == tuple(range(NX))[::-1]


def test_arguments_are_checked_when_the_method_is_made(setup):
    """A bad argument fails in LatentDA(...), before an xpList runs the methods listed before it; numpy numbers
    (an xpList built from np.arange) pass as Python's; the smoother refuses the filter's arguments; observation
    errors name the cycle."""
    pipeline, HMM, xx, yy = setup
    assert _method(pipeline, lag=np.int64(2), condition_noise=np.float32(0.05), context=np.int64(2)).Lag == 1
    for options, message in ((dict(lag=0), r"lag must be an integer in \[1, 3\] \(the prior's window is 4\), got 0"),
                             (dict(lag=2.0), "lag must be an integer"),
                             (dict(lag=2, context=3), r"context must be an integer in \[1, 2\]"),
                             (dict(condition_noise=0.0), "conditioning noise must be positive"),
                             (dict(conditioning="nudging"), "conditioning must be one of"),
                             (dict(settings={"steps": 0}), "steps: must be an integer ≥ 1"),
                             (dict(mode="smoother", lag=2, context=1), "lag, context: the filter's, not the smoother's"),
                             (dict(N=1), "N must be an integer ≥ 2"), (dict(N=2.5), "N must be an integer"),
                             (dict(latent_seed=1.5), "latent_seed must be an integer"),
                             (dict(forecasts="no"), "forecasts must be True or False"),
                             (dict(check_time_step="yes"), "check_time_step must be True or False"),
                             (dict(settings={"overlap": 1}), "overlap: the blankets of a trajectory longer than the window"),
                             (dict(state_index=np.arange(NX) + 0.7), "state_index must be a 1-D array of integers"),
                             (dict(dynamics="persistence"), "dynamics must be one of prior, model"),
                             (dict(dynamics="model", conditioning="inpaint"), "dynamics='model' takes conditioning mmps or known"),
                             (dict(dynamics="model", background_noise=0.0), "background_noise must be a positive number or spread"),
                             (dict(dynamics="model", background_noise=np.inf), "background_noise must be a positive number"),
                             (dict(dynamics="model", background_noise="ensemble"), "background_noise must be a positive number"),
                             (dict(dynamics="model", background_inflation=-1.0), "background_inflation must be a positive number"),
                             (dict(background_noise=0.5), "background_noise, background_inflation, background_factor, increment, spin_up, history, innovation, ensemble_update"),
                             (dict(background_factor=2), "background_noise, background_inflation, background_factor, increment, spin_up, history, innovation, ensemble_update"),
                             (dict(dynamics="model", background_factor=0), "background_factor must be an integer"),
                             (dict(spin_up=2), "background_noise, background_inflation, background_factor, increment, spin_up, history, innovation, ensemble_update"),
                             (dict(dynamics="model", spin_up=-1), "spin_up must be an integer"),
                             (dict(dynamics="model", increment=1), "increment must be True or False"),
                             (dict(history="analyses"), "background_noise, background_inflation, background_factor, increment, spin_up, history, innovation, ensemble_update"),
                             (dict(dynamics="model", history="encoded"), "history must be one of draws, analyses"),
                             (dict(innovation="forecast"), "innovation, ensemble_update, loc_rad and infl: the options of dynamics='model'"),
                             (dict(dynamics="model", innovation="forecast"), "innovation='forecast' .* needs increment=True"),
                             (dict(dynamics="model", increment=True, innovation="analysis"), "innovation must be one of draw, forecast"),
                             (dict(ensemble_update=True), "ensemble_update, loc_rad and infl: the options of dynamics='model'"),
                             (dict(dynamics="model", ensemble_update="yes"), "ensemble_update must be True or False"),
                             (dict(dynamics="model", loc_rad=10), "loc_rad and infl: the options of ensemble_update=True"),
                             (dict(dynamics="model", infl=1.04), "loc_rad and infl: the options of ensemble_update=True"),
                             (dict(dynamics="model", ensemble_update=True, loc_rad=0), "loc_rad must be a positive number or None"),
                             (dict(dynamics="model", ensemble_update=True, infl=np.nan), "infl must be a positive number, got nan"),
                             (dict(mode="smoother", ensemble_update=True), "ensemble_update: the filter's, not the smoother's"),
                             (dict(mode="smoother", dynamics="model"), "dynamics: the filter's, not the smoother's")):
        with pytest.raises(LatentdaError, match=message):
            _method(pipeline, **options)
    biased = modelling.Operator(**modelling.partial_Id_Obs(NX, np.arange(4)), noise=modelling.GaussRV(mu=0.5, C=0.01, M=4))
    hmm = tiny_hmm()
    hmm.Obs = type(hmm.Obs)(time_dependent=lambda ko: biased if ko == 1 else _obs_at(ko))
    observed = np.empty(OBSERVATIONS, dtype=object)
    observed[:] = [yy[ko] if ko != 1 else np.zeros(4) for ko in range(OBSERVATIONS)]
    with pytest.raises(LatentdaError, match="cycle ko = 1: LatentDA supports zero-mean observation noise only"):
        _method(pipeline, lag=1).assimilate(hmm, xx, observed)


def _assessed(monkeypatch) -> dict:
    """Every ensemble DAPPER is given, by (ko, series): ko None for the start."""
    real, seen = dapper.stats.Stats.assess, {}

    def spying(self, k, ko=None, faus=None, **kwargs):
        seen[(ko, faus or "au")] = np.array(kwargs["E"])
        return real(self, k, ko, faus, **kwargs)

    monkeypatch.setattr(dapper.stats.Stats, "assess", spying)
    return seen


def _windows_from_a_state(monkeypatch) -> list:
    """Every window the model's filter samples from a member's state (the guided cycles' z_a and z_b draws), as
    (state, members, options, its observation operator, its analysis)."""
    import latentda.integrations.dapper as adapter

    calls, real = [], adapter.filter_members

    def spying(pipeline, cycles, members, settings, seed, state=None, **options):
        if state is None:
            return real(pipeline, cycles, members, settings, seed, **options)
        cycles = list(cycles)
        result = next(real(pipeline, cycles, members, settings, seed, state=state, **options))
        calls.append((state, members, options, cycles[0], result.analysis))
        return iter([result])

    monkeypatch.setattr(adapter, "filter_members", spying)
    return calls


def test_model_dynamics_step_each_members_analysis(setup, monkeypatch):
    """dynamics="model": the forecast recorded at cycle ko is the HMM's model applied to each member's analysis
    of the cycle before (the start's at ko = 0), member by member."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    _method(pipeline, dynamics="model").assimilate(HMM, xx, yy)
    step = lambda E: HMM.Dyn(E, 0.0, 1.0)  # the tiny HMM: one model step a cycle
    np.testing.assert_allclose(seen[(0, "f")], step(seen[(None, "au")]), rtol=1e-12)
    for ko in range(1, OBSERVATIONS):
        np.testing.assert_allclose(seen[(ko, "f")], step(seen[(ko - 1, "au")]), rtol=1e-12)
        assert not np.allclose(seen[(ko, "f")], seen[(ko, "au")])  # the analysis moved the forecast


@pytest.mark.parametrize("lag", [1, 2])
def test_model_dynamics_increment_is_what_the_observations_change(setup, monkeypatch, lag):
    """increment=True: x_a = x_f + D(z_a) − D(z_b), z_b the same draw without y_k: each cycle's second window reads
    the background alone, from the member's state before the cycle; drawn again from that state with y_k as well,
    it gives D(z_a) = x_a − x_f + D(z_b) (the same random numbers: the two draws differ by y_k only)."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    paired = _windows_from_a_state(monkeypatch)
    xp = _method(pipeline, dynamics="model", increment=True, lag=lag)
    xp.assimilate(HMM, xx, yy)
    assert len(paired) == OBSERVATIONS * N_MEMBERS
    for number, (state, members, options, alone, decoded_b) in enumerate(paired):
        ko, m = divmod(number, N_MEMBERS)
        assert members == [m] and all(g.name.startswith("background") for g in alone.groups)
        full = ObservationOperator([*xp._operator(HMM, ko, yy[ko]).groups, *alone.groups])
        decoded_a = next(filter_members(pipeline, [full], [m], xp._posterior_settings(), 0, state=state, **options)).analysis
        np.testing.assert_allclose(decoded_a[0] - decoded_b[0], (seen[(ko, "au")] - seen[(ko, "f")])[m].reshape(2, 8, 8),
                                   rtol=1e-5, atol=1e-5)
        assert np.abs(decoded_a - decoded_b).max() > 1e-3  # y_k moved the draw


def test_model_dynamics_history_of_encoded_analyses(setup, monkeypatch):
    """history="analyses": after the spin-up each cycle samples the new state alone (lag 1) given the member's last
    K − 1 analyses encoded, E(x_a) — the states the model stepped — with the member's random streams carried on; the
    spin-up is the lagged filter's as with history="draws"."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    _method(pipeline, dynamics="model", increment=True, lag=2, spin_up=1).assimilate(HMM, xx, yy)
    draws = dict(seen)
    seen.clear()
    calls = _windows_from_a_state(monkeypatch)
    _method(pipeline, dynamics="model", increment=True, lag=2, spin_up=1, history="analyses").assimilate(HMM, xx, yy)
    np.testing.assert_allclose(seen[(0, "au")], draws[(0, "au")], rtol=1e-6)  # the spin-up
    assert not np.allclose(seen[(2, "au")], draws[(2, "au")], atol=1e-3)
    assert len(calls) == 2 * (OBSERVATIONS - 1) * N_MEMBERS  # z_a and z_b per guided cycle and member
    K = pipeline.window
    for number, (state, members, options, _, _) in enumerate(calls):
        ko, rest = divmod(number, 2 * N_MEMBERS)
        ko, m = ko + 1, rest // 2
        assert members == [m] and options["lag"] == 1 and state.recent == []
        if ko >= 2:  # the analyses of cycles ko − K + 1 … ko − 1 (as far as they go back past the spin-up), encoded
            count = min(K - 1, ko - 1)
            analyses = np.stack([seen[(k, "au")][m] for k in range(ko - count, ko)]).reshape(1, count, 2, 8, 8)
            assert state.history.shape[1] == K - 1
            np.testing.assert_allclose(state.history[:, -count:], pipeline.encode(analyses), rtol=1e-5, atol=1e-5)
        assert torch.equal(state.generator_states[0], calls[number - number % 2][0].generator_states[0])  # z_a, z_b alike
    assert not torch.equal(calls[0][0].generator_states[0], calls[2 * N_MEMBERS][0].generator_states[0])  # member 0's stream
    # moves on from cycle to cycle


def test_model_dynamics_innovation_against_the_forecast(setup, monkeypatch):
    """innovation="forecast": each guided cycle draws z_b (the background alone) first, then z_a given the member's
    observations shifted by H(D(z_b) − x_f) — grid points and pair means alike — so that the increment D(z_a) − D(z_b)
    reads y_k − H x_f; the spin-up and the background are untouched, and the analyses differ from innovation="draw"."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    options = dict(dynamics="model", increment=True, lag=2, spin_up=1, history="analyses", background_factor=2)
    _method(pipeline, **options).assimilate(HMM, xx, yy)
    drawn = dict(seen)
    seen.clear()
    calls = _windows_from_a_state(monkeypatch)
    _method(pipeline, **options, innovation="forecast").assimilate(HMM, xx, yy)
    np.testing.assert_allclose(seen[(0, "au")], drawn[(0, "au")], rtol=1e-6)  # the spin-up
    assert not np.allclose(seen[(2, "au")], drawn[(2, "au")], atol=1e-3)
    assert len(calls) == 2 * (OBSERVATIONS - 1) * N_MEMBERS
    for number in range(0, len(calls), 2):
        ko, m = number // (2 * N_MEMBERS) + 1, (number // 2) % N_MEMBERS
        (_, _, _, alone, prior_draw), (_, _, _, guided, _) = calls[number], calls[number + 1]
        assert all(group.name.startswith("background") for group in alone.groups)
        background = [g for g in guided.groups if g.name.startswith("background")]
        assert [g.name for g in background] == [g.name for g in alone.groups]
        for a, b in zip(background, alone.groups):
            np.testing.assert_array_equal(a.values, b.values)
        obs = HMM.Obs(ko)
        matrix = observation_matrix(obs, NX)
        shift = prior_draw.reshape(-1) - seen[(ko, "f")][m]  # D(z_b) − x_f of member m
        noise = np.sqrt(np.diag(obs.noise.C.full))
        expected = observation_operator(matrix, yy[ko] + matrix @ shift, noise, (2, 8, 8)).groups
        observed = [g for g in guided.groups if not g.name.startswith("background")]
        assert len(observed) == len(expected) and np.abs(matrix @ shift).max() > 1e-3
        for a, b in zip(observed, expected):
            np.testing.assert_allclose(a.values, b.values, rtol=1e-10, atol=1e-10)


def test_model_dynamics_background_noise_weighs_the_forecast(setup, monkeypatch):
    """The forecast is an observation of the new state with noise σ_b (lag 1): a tight background (σ_b 0.01) brings the
    analysis closer to the forecast than the autoencoder's own reconstruction of it, a loose one (σ_b 100) leaves
    it to the prior and y."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    gaps = {}
    for noise in (0.01, 100.0):
        seen.clear()
        _method(pipeline, dynamics="model", background_noise=noise, lag=1, settings={"steps": 8}).assimilate(HMM, xx, yy)
        gaps[noise] = np.mean([np.sqrt(np.mean((seen[(ko, "au")] - seen[(ko, "f")]) ** 2)) for ko in range(OBSERVATIONS)])
    forecasts = np.concatenate([seen[(ko, "f")] for ko in range(OBSERVATIONS)]).reshape(-1, 2, 8, 8)
    reconstruction = np.sqrt(np.mean((pipeline.decode(pipeline.encode(forecasts)) - forecasts) ** 2))
    assert gaps[0.01] < 0.8 * gaps[100.0] and gaps[0.01] < reconstruction


def test_model_dynamics_spun_up_on_every_cycle_is_the_priors_filter(setup, monkeypatch):
    """spin_up covering every cycle: the analyses are those of the prior's own filter (dynamics="prior", same lag and
    member streams), and the recorded forecasts the model's steps of them; a spin-up of 2 changes cycle 2 on only."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    _method(pipeline, lag=2).assimilate(HMM, xx, yy)
    prior = dict(seen)
    seen.clear()
    _method(pipeline, dynamics="model", lag=2, spin_up=OBSERVATIONS, increment=True).assimilate(HMM, xx, yy)
    spun = dict(seen)
    for ko in range(OBSERVATIONS):
        np.testing.assert_allclose(spun[(ko, "au")], prior[(ko, "au")], rtol=1e-5, atol=1e-5)  # batches of 3 and of 1
        before = spun[(ko - 1, "au")] if ko else spun[(None, "au")]
        np.testing.assert_allclose(spun[(ko, "f")], HMM.Dyn(before, 0.0, 1.0), rtol=1e-12)
    seen.clear()
    _method(pipeline, dynamics="model", lag=2, spin_up=2).assimilate(HMM, xx, yy)
    for ko in range(OBSERVATIONS):
        assert np.allclose(seen[(ko, "au")], spun[(ko, "au")], rtol=1e-5, atol=1e-5) == (ko < 2)


def test_model_dynamics_a_diverging_model_stops_in_one_line(setup):
    """A model that returns NaN (it diverged from an analysis) stops the filter naming the cycle and the members."""
    pipeline, HMM, xx, yy = setup
    hmm = copy.deepcopy(HMM)
    step = hmm.Dyn.model
    hmm.Dyn.model = lambda x, t, dt: np.where(np.arange(x.shape[-1]) == 3, np.nan, step(x, t, dt)) if t >= 2 else step(x, t, dt)
    with pytest.raises(LatentdaError, match=r"the model's forecast of cycle ko = 2 is not finite for member\(s\) 0, 1, 2: the model "
                                            "diverged"):
        _method(pipeline, dynamics="model").assimilate(hmm, xx, yy)


@pytest.mark.parametrize("factor", [1, 2])
def test_model_dynamics_background_noise_from_the_spread(setup, monkeypatch, factor):
    """background_noise="spread": each cycle σ_b is λ times the members' forecast spread (DAPPER's spread of the
    recorded forecast ensemble; with background_factor k that of its k × k block means, which the background then
    observes), the same for every member."""
    pipeline, HMM, xx, yy = setup
    seen = _assessed(monkeypatch)
    backgrounds = []
    real = LatentDA._background
    monkeypatch.setattr(LatentDA, "_background", lambda self, forecast, noise: backgrounds.append((forecast, real(self, forecast, noise)))
                        or backgrounds[-1][1])
    _method(pipeline, dynamics="model", background_inflation=1.5, background_factor=factor).assimilate(HMM, xx, yy)
    assert len(backgrounds) == OBSERVATIONS * N_MEMBERS
    for ko in range(OBSERVATIONS):
        forecasts = seen[(ko, "f")].reshape(N_MEMBERS, 2, 4 if factor == 2 else 8, factor, 4 if factor == 2 else 8, factor)
        blocks = forecasts.mean(axis=(3, 5))  # (members, C, 8/k, 8/k)
        spread = np.sqrt(np.mean(np.var(blocks, axis=0, ddof=1)))
        for m in range(N_MEMBERS):
            forecast, groups = backgrounds[ko * N_MEMBERS + m]
            assert [g.sampling for g in groups] == ["grid" if factor == 1 else "coarsen"] * 2
            for c, group in enumerate(groups):
                assert group.noise_std == pytest.approx(1.5 * spread, rel=1e-10) and group.factor == factor
                np.testing.assert_allclose(group.values[0], blocks[m, c], rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(group(torch.from_numpy(forecast[None, None]).double()).numpy()[0],
                                           blocks[m, c].ravel(), rtol=1e-6, atol=1e-7)  # the operator reads block means


def _localized_hmm():
    """The tiny HMM observing 24 grid points a cycle (new ones every cycle) with DAPPER's localizer of them, the state
    taken as a line of NX points."""
    def obs_at(ko):
        points = np.sort(np.random.default_rng(ko).choice(NX, 24, replace=False))
        return modelling.Operator(**modelling.partial_Id_Obs(NX, points), noise=0.01,
                                  localizer=nd_Id_localization((NX,), obs_inds=points, periodic=False))
    hmm = tiny_hmm()
    hmm.Obs = type(hmm.Obs)(time_dependent=obs_at)
    return hmm


def _kalman_update(forecasts: np.ndarray, H: np.ndarray, R: np.ndarray, y: np.ndarray):
    """The Kalman analysis mean and covariance of an ensemble's forecasts (N, Nx) with their sample covariance P."""
    mean = forecasts.mean(axis=0)
    P = np.cov(forecasts, rowvar=False, ddof=1)
    gain = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    return mean + gain @ (y - H @ mean), (np.eye(len(mean)) - gain @ H) @ P


@pytest.mark.parametrize("loc_rad", [None, 1e6])
def test_model_dynamics_ensemble_update_is_the_etkf_of_the_forecasts(setup, monkeypatch, loc_rad):
    """ensemble_update=True, the hybrid: each cycle the latentda step's backgrounds are the ETKF analyses of every
    member's model forecast with y_k — their mean the Kalman update of the forecasts' mean with their sample
    covariance P, their covariance infl² (I − KH) P — σ_b their spread, and the analysis the background plus the
    latentda increment D(z_a) − D(z_b); the recorded forecasts stay the model's steps of the analyses. A LETKF of
    (near) infinite radius is the global ETKF."""
    pipeline, HMM, xx, yy = setup
    if loc_rad is not None:
        HMM = _localized_hmm()
        dpr.set_seed(3)
        xx, yy = HMM.simulate()
    seen = _assessed(monkeypatch)
    backgrounds, real = [], LatentDA._background
    monkeypatch.setattr(LatentDA, "_background", lambda self, forecast, noise: backgrounds.append((forecast, noise))
                        or real(self, forecast, noise))
    paired = _windows_from_a_state(monkeypatch)
    xp = _method(pipeline, dynamics="model", increment=True, ensemble_update=True, loc_rad=loc_rad, infl=1.1)
    xp.assimilate(HMM, xx, yy)
    assert len(backgrounds) == OBSERVATIONS * N_MEMBERS and len(paired) == OBSERVATIONS * N_MEMBERS
    for ko in range(OBSERVATIONS):
        before = seen[(ko - 1, "au")] if ko else seen[(None, "au")]
        np.testing.assert_allclose(seen[(ko, "f")], HMM.Dyn(before, 0.0, 1.0), rtol=1e-12)
        obs = HMM.Obs(ko)
        H = observation_matrix(obs, NX)
        mean, covariance = _kalman_update(seen[(ko, "f")], H, obs.noise.C.full, yy[ko])
        cycle = np.stack([backgrounds[ko * N_MEMBERS + m][0].reshape(-1) for m in range(N_MEMBERS)])
        np.testing.assert_allclose(cycle.mean(axis=0), mean, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.cov(cycle, rowvar=False, ddof=1), 1.1**2 * covariance, rtol=1e-6, atol=1e-8)
        assert np.abs(cycle.mean(axis=0) - seen[(ko, "f")].mean(axis=0)).max() > 1e-2  # y_k moved them
        for m in range(N_MEMBERS):
            assert backgrounds[ko * N_MEMBERS + m][1] == pytest.approx(np.sqrt(np.mean(np.var(cycle, axis=0, ddof=1))), rel=1e-10)
            state, members, options, alone, decoded_b = paired[ko * N_MEMBERS + m]
            full = ObservationOperator([*xp._operator(HMM, ko, yy[ko]).groups, *alone.groups])
            decoded_a = next(filter_members(pipeline, [full], [m], xp._posterior_settings(), 0, state=state, **options)).analysis
            np.testing.assert_allclose((decoded_a - decoded_b)[0].reshape(-1), seen[(ko, "au")][m] - cycle[m], rtol=1e-5, atol=1e-5)


def test_model_dynamics_localized_ensemble_update_leaves_what_no_observation_reaches(setup, monkeypatch):
    """A LETKF radius of 1 grid point (Gaspari–Cohn taper, zero beyond 2 × 1.82): the backgrounds equal the forecasts
    (infl 1) at the points farther than that from every observation of the cycle and move at the observed ones; an
    HMM without a localizer is refused in one line naming the cycle."""
    pipeline, _, _, _ = setup
    HMM = _localized_hmm()
    dpr.set_seed(3)
    xx, yy = HMM.simulate()
    seen = _assessed(monkeypatch)
    backgrounds, real = [], LatentDA._background
    monkeypatch.setattr(LatentDA, "_background", lambda self, forecast, noise: backgrounds.append(forecast.reshape(-1))
                        or real(self, forecast, noise))
    _method(pipeline, dynamics="model", ensemble_update=True, loc_rad=1).assimilate(HMM, xx, yy)
    for ko in range(OBSERVATIONS):
        points = np.sort(np.random.default_rng(ko).choice(NX, 24, replace=False))
        far = np.abs(np.arange(NX)[:, None] - points[None]).min(axis=1) > 2 * 1.82
        assert 0 < far.sum() < NX - 24
        cycle = np.stack(backgrounds[ko * N_MEMBERS : (ko + 1) * N_MEMBERS])
        np.testing.assert_allclose(cycle[:, far], seen[(ko, "f")][:, far], rtol=1e-12, atol=1e-12)
        assert np.abs(cycle[:, points] - seen[(ko, "f")][:, points]).min(axis=0).max() > 1e-3
    with pytest.raises(LatentdaError, match="loc_rad: the observations of cycle ko = 0 have no localizer"):
        _method(pipeline, dynamics="model", ensemble_update=True, loc_rad=1).assimilate(*setup[1:])


def test_the_prior_must_step_as_the_hmm_cycles(setup):
    """A prior trained on states one dto apart: an HMM observing every other model step (dto = 2, the prior's
    step 1) is refused with both numbers before any sampling; ``check_time_step=False`` runs it (a prior whose
    time axis has other units than the HMM's)."""
    pipeline = setup[0]
    hmm = tiny_hmm()
    hmm.tseq = modelling.Chronology(dt=1, dko=2, Ko=2, BurnIn=0)
    dpr.set_seed(4)
    xx, yy = hmm.simulate()
    with pytest.raises(LatentdaError, match=r"time step is 1, the HMM's time between observations \(tseq.dto\) 2"):
        _method(pipeline, lag=1).assimilate(hmm, xx, yy, fail_gently=False)
    xp = _method(pipeline, lag=1, check_time_step=False)
    xp.assimilate(hmm, xx, yy, fail_gently=False)
    assert np.isfinite(statistics(xp)["rmse.a"][1:]).all()


def test_members_dealt_over_two_processes_match_one(setup, tmp_path):
    """torchrun, 2 CPU processes: members 0, 2 | 1 gathered each cycle give DAPPER the one-process
    statistics (filter, smoother, and the filter with the HMM's model, whose σ_b is the spread of every member, with
    and without the increment, block means, a spin-up and the encoded analyses as the history); processes with another truth stop with a one-line error."""
    pipeline, HMM, xx, yy = setup
    pipeline.save_pretrained(tmp_path / "pipeline")
    script = str(Path(__file__).parent / "scripts" / "dapper_members.py")
    run_torchrun([script, str(tmp_path / "pipeline"), str(tmp_path / "two.npz")])
    two = np.load(tmp_path / "two.npz")
    expected = {}
    for mode, options in MODES.items():
        xp = _method(pipeline, **options)
        xp.assimilate(HMM, xx, yy, fail_gently=False)
        expected.update({f"{mode}.{key}": value for key, value in statistics(xp).items()})
    assert sorted(two.files) == sorted(expected) and "filter.rmse.f" in expected and "smoother.rmse.s" in expected
    assert "model.rmse.f" in expected and not np.allclose(expected["model-increment.rmse.a"], expected["model.rmse.a"])
    for key, values in expected.items():  # up to float rounding (1 thread a process, 2 alone)
        np.testing.assert_allclose(two[key], values, rtol=1e-3, atol=1e-5, err_msg=key)
    result = run_torchrun([script, str(tmp_path / "pipeline"), str(tmp_path / "bad.npz"), "disagree"], check=False)
    assert result.returncode != 0 and "disagree on the truth xx" in result.stdout, result.stdout[-2000:]
    assert not (tmp_path / "bad.npz").exists()


def test_observation_operators_are_translated_exactly(setup):
    pipeline, HMM, xx, yy = setup
    rng = np.random.default_rng(0)
    x = rng.standard_normal(NX)
    transposed = np.arange(NX).reshape(2, 8, 8).transpose(0, 2, 1).ravel()  # states ordered (channel, x, y)
    for ko in (0, 1):
        operator = _obs_at(ko)
        H = observation_matrix(operator, NX)
        for index in (None, transposed):
            fields = x.reshape(2, 8, 8) if index is None else np.empty(NX)
            if index is not None:
                fields[index] = x
                fields = fields.reshape(2, 8, 8)
            translated = observation_operator(H, H @ x, np.full(H.shape[0], 0.1), (2, 8, 8), index)
            assert [g.sampling for g in translated.groups] == (["grid"] * 2 if ko == 0 else ["linear"] * 2)
            y, _ = translated.observed()
            np.testing.assert_allclose(translated(torch.from_numpy(fields)[None, None]).numpy()[0], y.numpy(), atol=1e-12)
    nonlinear = modelling.Operator(M=3, model=lambda x: x[..., :3] ** 2, noise=0.1)
    with pytest.raises(LatentdaError, match="not linear"):
        observation_matrix(nonlinear, NX)
    mixing = np.zeros((1, NX))
    mixing[0, [0, 64]] = 1
    with pytest.raises(LatentdaError, match="one channel"):
        observation_operator(mixing, np.zeros(1), np.ones(1), (2, 8, 8))
    correlated = modelling.Operator(**modelling.partial_Id_Obs(NX, np.arange(2)), noise=np.array([[1.0, 0.5], [0.5, 1.0]]))
    hmm = tiny_hmm()
    hmm.Obs = type(hmm.Obs)(time_dependent=lambda ko: correlated)
    observed = np.empty(OBSERVATIONS, dtype=object)
    observed[:] = [np.zeros(2)] * OBSERVATIONS
    with pytest.raises(LatentdaError, match="diagonal"):
        _method(pipeline).assimilate(hmm, xx, observed)


def test_representation_error_is_added_in_physical_units(setup):
    """As ``latentda reanalyze``: observations of channel c get r_c s_c more noise, s_c the channel's physical std
    (for a transformed, e.g. bounded, channel not the std of the transformed variable)."""
    pipeline, HMM, xx, yy = setup
    prior = copy.copy(pipeline)
    stats = pipeline.statistics
    prior.statistics = Statistics(stats.channels, stats.mean, stats.std, stats.count, stats.transforms,
                                  stats.physical_mean, stats.std * np.array([3.0, 0.5]))
    prior.representation_error = np.array([0.2, 0.4])
    for ko in (0, 1):
        _, plain = _method(prior, settings={"steps": 2, "representation_error": False})._operator(HMM, ko, yy[ko]).observed()
        _, noisy = _method(prior)._operator(HMM, ko, yy[ko]).observed()
        extra = (noisy**2 - plain**2).numpy()
        expected = (0.2 * 3.0 * stats.std[0], 0.4 * 0.5 * stats.std[1])  # rows of u first, then of v (_obs_at)
        half = len(extra) // 2 if ko == 1 else int((observation_matrix(_obs_at(ko), NX).argmax(1) < 64).sum())
        np.testing.assert_allclose(extra[:half], expected[0] ** 2, rtol=1e-10)
        np.testing.assert_allclose(extra[half:], expected[1] ** 2, rtol=1e-10)


def test_forecast_skill_against_the_models_closed_form(setup):
    """The tiny HMM's model is x_{k+1} = 0.9 roll(x_k): from D(E(x_ko)) its error after ℓ cycles is
    0.9^ℓ roll^ℓ(D(E(x_ko)) − x_ko), whose RMS is 0.9^ℓ times the autoencoder's error at ko — with any
    state ordering (the RMS does not see it, a wrong fields ↔ state conversion would)."""
    pipeline, HMM, xx, yy = setup
    rng = np.random.default_rng(1)
    for index in (None, rng.permutation(NX)):
        skill = forecast_skill(pipeline, HMM, xx, lead=2, cycles=2, members=3, settings={"steps": 2}, state_index=index)
        context = skill["context"]
        assert skill["leads"] == [1, 2] and context == 2  # the tiny pipeline's window 4: overlap 2
        assert (skill["members"], skill["condition_noise"], skill["settings"]) == (3, 0.05, {"steps": 2})  # what it ran
        assert skill["cycles"] == [1, 2]  # the cycles with 2 true states before them and 2 after (Ko = 4)
        kko = HMM.tseq.kko
        floors, persistence = [], np.zeros(2)
        for ko in skill["cycles"]:
            fields = np.empty(NX)
            if index is None:
                fields = xx[kko[ko]].copy()
            else:
                fields[index] = xx[kko[ko]]
            decoded = pipeline.decode(pipeline.encode(fields.reshape(1, 2, 8, 8))).reshape(NX).astype(np.float64)
            state = decoded if index is None else decoded[index]
            floors.append(np.sqrt(np.mean((state - xx[kko[ko]]) ** 2)))
            persistence += [np.sqrt(np.mean((xx[kko[ko]] - xx[kko[ko + lead]]) ** 2)) for lead in (1, 2)]
        np.testing.assert_allclose(skill["model_rmse"], [0.9 * np.mean(floors), 0.81 * np.mean(floors)], rtol=1e-5)
        np.testing.assert_allclose(skill["persistence_rmse"], persistence / 2, rtol=1e-12)
        assert np.isfinite(skill["prior_rmse"]).all() and min(skill["prior_spread"]) > 0
    again = forecast_skill(pipeline, HMM, xx, lead=2, cycles=2, members=3, settings={"steps": 2}, state_index=index)
    assert again == skill  # seeded: the same members
    with pytest.raises(LatentdaError, match="no cycle"):
        forecast_skill(pipeline, HMM, xx, lead=4, members=3)
    with pytest.raises(LatentdaError, match="members ≥ 2"):
        forecast_skill(pipeline, HMM, xx, members=1)


def test_forecast_skill_reads_the_true_past_and_steps_the_model_per_cycle(setup, monkeypatch):
    """dko = 2 model steps per cycle, a time-dependent model x_{k+1} = (0.9 + 0.01 t_k) roll(x_k) and a
    burn-in: the model's row is each cycle's product of factors times the autoencoder's error, over the
    cycles after the burn-in only. The prior's row: a stand-in forecast that accepts only the encoded
    x_{ko−1}, x_ko as its history and returns the truth x_{ko..ko+lead} plus a known offset per member, so its
    rmse is |mean offset| and its spread their standard deviation at every lead."""
    pipeline = setup[0]
    tseq = modelling.Chronology(dt=1, dko=2, Ko=7, BurnIn=5)  # observations at t = 2, 4, …, 16; t > 5 from ko = 2
    dynamics = {"M": NX, "model": lambda x, t, dt: (0.9 + 0.01 * t) * np.roll(x, 1, axis=-1), "noise": 0}
    HMM = modelling.HiddenMarkovModel(dynamics, {"time_dependent": _obs_at}, tseq, modelling.GaussRV(C=1.0, M=NX))
    dpr.set_seed(5)
    xx, _ = HMM.simulate()
    kko = tseq.kko
    encoded = {ko: pipeline.encode(xx[kko[ko - 1 : ko + 1]].reshape(2, 2, 8, 8)) for ko in range(1, len(kko))}
    offsets = np.array([-1.0, 0.5, 2.0])

    def stand_in(prior, members, lead, settings, seed=0, initial=None, context=None, **options):
        matches = [ko for ko, z in encoded.items() if torch.equal(z, initial[0])]
        assert len(matches) == 1 and context == 2
        truth = xx[kko[matches[0] : matches[0] + lead + 1]].reshape(lead + 1, 2, 8, 8)
        return iter([(m, truth + offsets[m]) for m in members])

    monkeypatch.setattr("latentda.posterior.forecast.forecast_members", stand_in)
    with pytest.raises(LatentdaError, match=r"time step is 1, the HMM's time between observations \(tseq.dto\) 2"):
        forecast_skill(pipeline, HMM, xx, lead=2, cycles=4, members=3)  # the prior steps 1, the cycles 2
    skill = forecast_skill(pipeline, HMM, xx, lead=2, cycles=4, members=3, check_time_step=False)  # the stand-in's step
    assert skill["cycles"] == [2, 3, 4, 5]  # after the burn-in (ko 0, 1 excluded), 2 cycles before the end
    expected = np.zeros(2)
    for ko in skill["cycles"]:
        decoded = pipeline.decode(pipeline.encode(xx[kko[ko]].reshape(1, 2, 8, 8))).reshape(NX).astype(np.float64)
        floor = np.sqrt(np.mean((decoded - xx[kko[ko]]) ** 2))
        factor = 1.0
        for lead in (1, 2):
            for k in range(kko[ko + lead - 1], kko[ko + lead]):
                factor *= 0.9 + 0.01 * tseq.tt[k]
            expected[lead - 1] += floor * factor / 4
    np.testing.assert_allclose(skill["model_rmse"], expected, rtol=1e-5)
    np.testing.assert_allclose(skill["prior_rmse"], [abs(offsets.mean())] * 2, rtol=1e-6)
    np.testing.assert_allclose(skill["prior_spread"], [offsets.std(ddof=1)] * 2, rtol=1e-6)


def _bench_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_dapper_qg", Path(__file__).resolve().parents[1] / "tools" / "bench_dapper_qg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _InterruptedAt:
    """The observations, until cycle ``ko`` is read: then Ctrl-C (or SIGTERM, which the benchmark turns into it)."""

    def __init__(self, yy, ko: int):
        self.yy, self.ko = yy, ko

    def __getattr__(self, name):  # shape, len …: DAPPER's Stats reads them
        return getattr(self.yy, name)

    def __len__(self):
        return len(self.yy)

    def __getitem__(self, index):
        if index == self.ko:
            raise KeyboardInterrupt
        return self.yy[index]


@pytest.mark.parametrize("stop", ["interrupted", "failed"])
def test_the_benchmark_keeps_the_cycles_of_a_run_stopped_part_way(setup, stop):
    """tools/bench_dapper_qg.py's rows: a run interrupted when it reads cycle 3's observations, or failing when the
    model diverges at cycle 2, keeps the series of the cycles it assessed — those of the run that went to the end,
    the later ones null — and averages them; the complete run's row has DAPPER's own averages."""
    pipeline, HMM, xx, yy = setup
    bench = _bench_tool()
    options = {"dynamics": "model"}
    full, interrupted = bench.assimilate_row(_method(pipeline, **options), HMM, xx, yy, HMM.tseq)
    assert not interrupted and "failed" not in full and full["rmse.a"] == pytest.approx(np.mean(full["series"]["rmse.a"]), abs=1e-5)
    hmm, observations, assessed = HMM, yy, 3
    if stop == "interrupted":
        observations = _InterruptedAt(yy, assessed)
    else:
        hmm, assessed = copy.deepcopy(HMM), 2
        step = hmm.Dyn.model
        hmm.Dyn.model = lambda x, t, dt: np.full_like(x, np.nan) if t >= 2 else step(x, t, dt)
    row, interrupted = bench.assimilate_row(_method(pipeline, **options), hmm, xx, observations, HMM.tseq)
    assert interrupted == (stop == "interrupted"), row
    assert stop in row and "s_per_cycle" not in row and (stop == "interrupted" or "not finite" in row["failed"]), row
    for key in ("rmse.a", "spread.a"):
        kept = row["series"][key]
        assert kept[:assessed] == full["series"][key][:assessed] and kept[assessed:] == [None] * (OBSERVATIONS - assessed)
        assert row[key] == pytest.approx(np.mean(kept[:assessed]), abs=1e-5)  # the series: 5 decimals
    assert row["cycles_assessed.a"] == assessed
