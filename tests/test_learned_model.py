"""The learned prior as a DAPPER model (latentda.integrations.learned_model): its step is the prior's forecast
from the encoded states, each member from its own; it remembers a member's last states only while the calls
follow one another in time; the HMM is copied; bad input fails with one line; DAPPER's EnKF runs with it."""

import numpy as np
import pytest
import torch

pytest.importorskip("dapper", reason="DAPPER is an optional extra: pip install 'latentda[dapper]'")

import dapper as dpr  # noqa: E402
from dapper.da_methods import EnKF  # noqa: E402

import latentda.posterior.forecast as forecast_module  # noqa: E402
from conftest import make_tiny_pipeline  # noqa: E402
from latentda.errors import LatentdaError  # noqa: E402
from latentda.integrations.dapper import _fields_to_states, _states_to_fields  # noqa: E402
from latentda.integrations.learned_model import LearnedModel, with_learned_model  # noqa: E402
from latentda.posterior.forecast import forecast_members  # noqa: E402
from latentda.posterior.reanalysis import PosteriorSettings  # noqa: E402
from test_dapper_adapter import NX, OBSERVATIONS, tiny_hmm  # noqa: E402

SETTINGS = {"steps": 2}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipeline, _ = make_tiny_pipeline(tmp_path_factory.mktemp("learned") / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    pipeline.time_step = 1.0  # the tiny HMM's model step (dt = dto)
    return pipeline


def _states(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, NX))


def test_a_step_is_the_priors_forecast_of_each_member_from_its_own_state(pipeline):
    states = _states(3)
    model = LearnedModel(pipeline, settings=SETTINGS, seed=5)
    got = model(states, 0.0, 1.0)
    shape = (pipeline.layout.num_channels, *pipeline.layout.shape)
    initial = pipeline.encode(_states_to_fields(states, shape))[:, None]
    run = forecast_members(pipeline, [0, 1, 2], 1, PosteriorSettings(**SETTINGS), seed=5, initial=initial, context=1)
    expected = _fields_to_states(np.stack([fields[1] for _, fields in run]))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0], got[1])  # each member from its own state
    one = LearnedModel(pipeline, settings=SETTINGS, seed=5)(states[0], 0.0, 1.0)  # a single state (Nx,)
    assert one.shape == (NX,)
    np.testing.assert_allclose(one, expected[0], rtol=1e-6, atol=1e-6)
    again = model(states, 1.0, 1.0)  # the next step draws new noise (stream seed + 1)
    assert not np.allclose(again, got)
    np.testing.assert_allclose(model(states, 0.0, 1.0), got, rtol=1e-6, atol=1e-6)  # the same time, the same draws


def test_member_m_is_forecast_from_its_own_state_and_returned_in_row_m(pipeline, monkeypatch):
    """The tiny prior ignores its history (zero backbone), so route through a fake forecast that returns each
    member's given state, decoded, plus m: row m must be D(E(x_m)) + m, the rows handed over in reverse."""
    def fake(prior, members, lead, settings, **kwargs):
        initial = kwargs["initial"]
        for m in reversed(members):
            now = prior.decode(initial[m, -1:])
            yield m, np.concatenate([now, now + m])

    monkeypatch.setattr(forecast_module, "forecast_members", fake)
    states = _states(3, seed=4)
    got = LearnedModel(pipeline, settings=SETTINGS)(states, 0.0, 1.0)
    shape = (pipeline.layout.num_channels, *pipeline.layout.shape)
    reconstructed = _fields_to_states(pipeline.decode(pipeline.encode(_states_to_fields(states, shape))))
    np.testing.assert_allclose(got, reconstructed + np.arange(3)[:, None], rtol=1e-6, atol=1e-6)


def test_context_remembers_the_members_last_states_while_the_calls_follow_in_time(pipeline, monkeypatch):
    seen = []
    original = forecast_module.forecast_members

    def spy(prior, members, lead, settings, **kwargs):
        seen.append((kwargs["initial"].clone(), kwargs["context"]))
        return original(prior, members, lead, settings, **kwargs)

    monkeypatch.setattr(forecast_module, "forecast_members", spy)
    model = LearnedModel(pipeline, context=3, settings=SETTINGS)
    shape = (pipeline.layout.num_channels, *pipeline.layout.shape)
    inputs = [_states(2, seed) for seed in range(5)]
    for step, states in enumerate(inputs[:4]):
        model(states, float(step), 1.0)
    encoded = [pipeline.encode(_states_to_fields(states, shape)) for states in inputs]
    assert [context for _, context in seen] == [1, 2, 3, 3]
    torch.testing.assert_close(seen[3][0], torch.stack(encoded[1:4], dim=1))  # the last 3 calls' states, in order
    model(inputs[4], 10.0, 1.0)  # not t + dt of the last call: starts again from the state given
    assert seen[-1][1] == 1
    torch.testing.assert_close(seen[-1][0], encoded[4][:, None])
    model(inputs[0][:1], 11.0, 1.0)  # in time, but another number of members: starts again
    assert seen[-1][1] == 1


def test_the_hmm_is_copied_and_an_ensemble_filter_runs_with_the_learned_model(pipeline, monkeypatch):
    HMM = tiny_hmm()
    dpr.set_seed(3)
    xx, yy = HMM.simulate()
    exact = HMM.Dyn.model
    HMM.Dyn.linear = tangent = lambda x, t, dt: 0.9 * np.roll(np.eye(NX), 1, axis=0)  # the exact model's, as DAPPER's have
    learned = with_learned_model(HMM, pipeline, settings=SETTINGS)
    assert HMM.Dyn.model is exact and isinstance(learned.Dyn.model, LearnedModel) and HMM.Dyn.linear is tangent
    with pytest.raises(LatentdaError, match="the learned model has no tangent-linear model"):  # not mixed in (ExtKF)
        learned.Dyn.linear(xx[0], 0.0, 1.0)
    times = []
    step = LearnedModel.__call__
    monkeypatch.setattr(LearnedModel, "__call__", lambda self, x, t, dt: times.append(t) or step(self, x, t, dt))
    xp = EnKF("Sqrt", N=6, infl=1.02)  # the tiny HMM's operators have no localiser for the LETKF
    xp.assimilate(learned, xx, yy)
    for sub in ("a", "f"):
        series = getattr(xp.stats.err.rms, sub)
        assert series.shape == (OBSERVATIONS,) and np.isfinite(series).all()
    assert times == list(range(OBSERVATIONS))  # one forecast per cycle, the first from the initial ensemble


def test_bad_input(pipeline):
    with pytest.raises(LatentdaError, match="context must be an integer in \\[1, 3\\]"):
        LearnedModel(pipeline, context=4)
    with pytest.raises(LatentdaError, match="conditioning must be one of"):
        LearnedModel(pipeline, conditioning="exact")
    with pytest.raises(LatentdaError, match="known frames"):  # the tiny prior was not trained with them
        LearnedModel(pipeline, conditioning="known")
    with pytest.raises(LatentdaError, match="steps"):
        LearnedModel(pipeline, settings={"steps": 0})
    with pytest.raises(LatentdaError, match="states of 5 entries"):
        LearnedModel(pipeline, settings=SETTINGS)(np.zeros((2, 5)), 0.0, 1.0)
    with pytest.raises(LatentdaError, match="non-finite"):
        LearnedModel(pipeline, settings=SETTINGS)(np.full((2, NX), np.nan), 0.0, 1.0)
    HMM = tiny_hmm()
    HMM.tseq = type(HMM.tseq)(dt=1, dko=2, Ko=2, BurnIn=0)
    with pytest.raises(LatentdaError, match="dko"):
        with_learned_model(HMM, pipeline)
    HMM.tseq = type(HMM.tseq)(dt=0.5, dko=1, Ko=2, BurnIn=0)  # the prior steps 1: refused, unless told otherwise
    with pytest.raises(LatentdaError, match=r"time step is 1, the HMM's time between observations \(tseq.dto\) 0.5"):
        with_learned_model(HMM, pipeline)
    assert isinstance(with_learned_model(HMM, pipeline, check_time_step=False).Dyn.model, LearnedModel)
