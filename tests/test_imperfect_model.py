"""Imperfect-model twin experiments (latentda.integrations.imperfect_model): the smooth noise fields' law,
the model error's shared and per-member parts, their size per observation cycle, and the HMM copy."""

import numpy as np
import pytest

pytest.importorskip("dapper", reason="DAPPER is an optional extra: pip install 'latentda[dapper]'")

import dapper.mods as modelling  # noqa: E402

from latentda.errors import LatentdaError  # noqa: E402
from latentda.integrations.imperfect_model import ModelError, smooth_fields, with_model_error  # noqa: E402


def test_smooth_fields_have_unit_rms_zero_edges_and_the_gaussian_correlation():
    length = 3.0
    fields = smooth_fields(np.random.default_rng(0), 400, (1, 64, 64), length)
    np.testing.assert_allclose(np.sqrt(np.mean(fields**2, axis=1)), 1.0, rtol=1e-12)
    grid = fields.reshape(400, 64, 64)
    assert not grid[:, [0, -1], :].any() and not grid[:, :, [0, -1]].any()
    interior = grid[:, 12:52, 12:52]
    for distance in (1, 2, 4, 6):  # white noise smoothed by a Gaussian of std ℓ: correlation exp(−d²/(4ℓ²))
        along_x = np.corrcoef(interior[:, :, :-distance].ravel(), interior[:, :, distance:].ravel())[0, 1]
        along_y = np.corrcoef(interior[:, :-distance].ravel(), interior[:, distance:].ravel())[0, 1]
        expected = np.exp(-(distance**2) / (4 * length**2))
        assert abs(along_x - expected) < 0.01 and abs(along_y - expected) < 0.01
    open_box = smooth_fields(np.random.default_rng(0), 2, (2, 16, 16), 1.0, zero_edges=False).reshape(2, 2, 16, 16)
    assert (open_box[..., 0, :] != 0).all()


def _identity(x, t, dt):
    return np.array(x, dtype=np.float64)


def test_shared_part_is_one_field_for_all_members_and_independent_part_one_per_member():
    shape = (1, 16, 16)
    ensemble = np.random.default_rng(1).standard_normal((5, 256))
    shared = ModelError(_identity, shape, shared=0.6, steps_per_cycle=4, length=2.0)(ensemble, 0.0, 1.0) - ensemble
    np.testing.assert_allclose(shared, np.broadcast_to(shared[0], shared.shape), atol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.mean(shared**2, axis=1)), 0.6 / 2, rtol=1e-12)  # 0.6 per cycle of 4 steps
    independent = ModelError(_identity, shape, independent=0.6, steps_per_cycle=4, length=2.0)(ensemble, 0.0, 1.0) - ensemble
    np.testing.assert_allclose(np.sqrt(np.mean(independent**2, axis=1)), 0.3, rtol=1e-12)
    assert np.abs(independent[0] - independent[1]).max() > 0.1
    state = ensemble[0]
    single = ModelError(_identity, shape, shared=0.3, steps_per_cycle=1, length=2.0)(state, 0.0, 1.0)
    assert single.shape == (256,) and np.isclose(np.sqrt(np.mean((single - state) ** 2)), 0.3)
    exact = ModelError(_identity, shape)(ensemble, 0.0, 1.0)
    np.testing.assert_array_equal(exact, ensemble)
    again = ModelError(_identity, shape, shared=0.6, steps_per_cycle=4, length=2.0, seed=0)(ensemble, 0.0, 1.0) - ensemble
    np.testing.assert_array_equal(again, shared)  # seeded


def test_one_cycle_error_of_members_and_of_the_ensemble_mean():
    """With neutral dynamics (the identity) a member's error after the dko steps of a cycle has mean square
    s² + r² and the ensemble mean's s² + r²/N (the steps' fields are independent: no cross terms on average)."""
    shape, members, steps, s, r = (1, 32, 32), 64, 4, 0.3, 0.5
    model = ModelError(_identity, shape, shared=s, independent=r, length=2.0, steps_per_cycle=steps, seed=7)
    member_ms, mean_ms = [], []
    for _ in range(60):
        ensemble = np.zeros((members, 32 * 32))
        for step in range(steps):
            ensemble = model(ensemble, float(step), 1.0)
        member_ms.append(np.mean(ensemble**2))
        mean_ms.append(np.mean(ensemble.mean(0) ** 2))
    assert abs(np.mean(member_ms) / (s**2 + r**2) - 1) < 0.05
    assert abs(np.mean(mean_ms) / (s**2 + r**2 / members) - 1) < 0.15


def test_with_model_error_copies_the_hmm_and_steps_per_cycle():
    tseq = modelling.Chronology(dt=1, dko=2, Ko=3, BurnIn=0)
    dynamics = {"M": 128, "model": lambda x, t, dt: 0.9 * np.roll(x, 1, axis=-1), "noise": 0}
    obs = {**modelling.partial_Id_Obs(128, np.arange(0, 128, 4)), "noise": 0.01}
    HMM = modelling.HiddenMarkovModel(dynamics, obs, tseq, modelling.GaussRV(C=1.0, M=128))
    noisy = with_model_error(HMM, (2, 8, 8), independent=0.4, length=1.0, seed=3)
    x = np.random.default_rng(2).standard_normal((3, 128))
    exact = 0.9 * np.roll(x, 1, axis=-1)
    np.testing.assert_array_equal(HMM.Dyn(x, 0.0, 1.0), exact)  # the original is unchanged
    error = noisy.Dyn(x, 0.0, 1.0) - exact
    np.testing.assert_allclose(np.sqrt(np.mean(error**2, axis=1)), 0.4 / np.sqrt(2), rtol=1e-12)  # dko = 2
    assert noisy.tseq.dko == 2 and noisy.Obs is not HMM.Obs


def test_bad_arguments():
    with pytest.raises(LatentdaError, match="shared model error"):
        ModelError(_identity, (1, 4, 4), shared=-1.0)
    with pytest.raises(LatentdaError, match="independent model error"):
        ModelError(_identity, (1, 4, 4), independent=float("nan"))
    with pytest.raises(LatentdaError, match="length"):
        ModelError(_identity, (1, 4, 4), length=0)
    with pytest.raises(LatentdaError, match="shape"):
        ModelError(_identity, (4, 4))
    with pytest.raises(LatentdaError, match="17 entries"):
        ModelError(_identity, (1, 4, 4), shared=0.1)(np.zeros(17), 0.0, 1.0)
