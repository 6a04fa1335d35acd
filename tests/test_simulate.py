"""Tests of the built-in Kolmogorov flow simulator and its zarr writer."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

pytest.importorskip("jax_cfd")
xr = pytest.importorskip("xarray")

from latentda.errors import LatentdaError  # noqa: E402
from latentda.simulate import kolmogorov  # noqa: E402
from latentda.simulate import simulate_kolmogorov, write_kolmogorov_zarr  # noqa: E402

# A small store configuration: cheap to compile and run, exercises batching (3 = 2 + 1).
SMALL = dict(trajectories=3, steps=3, size=16, spinup=2, seed=5, progress=False)


def _vorticity(u: np.ndarray, v: np.ndarray, cells: int) -> np.ndarray:
    """dv/dx - du/dy on the staggered grid, arrays (..., y, x), periodic."""
    spacing = 2 * math.pi / cells
    dv_dx = (np.roll(v, -1, axis=-1) - v) / spacing
    du_dy = (np.roll(u, -1, axis=-2) - u) / spacing
    return dv_dx - du_dy


@pytest.fixture(scope="module")
def flow64() -> np.ndarray:
    """2 trajectories of 20 states at 64², after the default 64-step (12.8 time units) spin-up."""
    batches = list(simulate_kolmogorov(2, 20, size=64, spinup=64, seed=0, progress=False))
    assert len(batches) == 1
    return batches[0]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("store") / "flow.zarr"
    path = write_kolmogorov_zarr(out, batch_size=2, **SMALL)
    return path


# --- physics -----------------------------------------------------------------------------------


def test_batch_shape_dtype_and_finite(flow64: np.ndarray) -> None:
    assert flow64.shape == (2, 20, 2, 64, 64)
    assert flow64.dtype == np.float32
    assert np.isfinite(flow64).all()


def test_energy_stays_in_turbulent_band(flow64: np.ndarray) -> None:
    # Mean kinetic energy <|u|²/2>. Measured at 64² after spin-up: 0.57 .. 1.01 over 128 states
    # of 4 trajectories. The forced laminar state u = sin(4y)/(0.016 + 0.1) has E ≈ 18.6 and rest
    # has E = 0, so [0.2, 3] catches a blow-up, a relaminarisation and a decay to rest, with
    # room for the chaotic fluctuations; 20 states (4 time units) cannot drift by 10×.
    energy = 0.5 * (flow64**2).sum(axis=2).mean(axis=(-1, -2))  # (trajectory, time)
    assert energy.min() > 0.2, energy.min()
    assert energy.max() < 3.0, energy.max()
    assert (energy.max(axis=1) / energy.min(axis=1) < 10).all()


def test_flow_is_turbulent_not_laminar(flow64: np.ndarray) -> None:
    u, v = flow64[:, :, 0], flow64[:, :, 1]
    vorticity = _vorticity(u, v, 64)
    # Measured: snapshot vorticity std 3.1 .. 4.8, extremes about ±15 .. ±24. A flow decaying to
    # rest would fall well below std 1.5 / range 10.
    assert vorticity.std(axis=(-1, -2)).min() > 1.5
    assert (vorticity.max(axis=(-1, -2)) - vorticity.min(axis=(-1, -2))).min() > 10
    # The laminar Kolmogorov profile has v = 0 and u, vorticity independent of x. Measured:
    # std of v and of u's deviation from its x-mean ≥ 0.6 (a velocity scale ~1).
    assert v.std(axis=(-1, -2)).min() > 0.3
    u_x_variation = u - u.mean(axis=-1, keepdims=True)
    assert u_x_variation.std(axis=(-1, -2)).min() > 0.3
    vorticity_x_variation = vorticity - vorticity.mean(axis=-1, keepdims=True)
    assert vorticity_x_variation.std(axis=(-1, -2)).min() > 1.0


def test_forcing_direction_and_axis_order(flow64: np.ndarray) -> None:
    # The forcing sin(4y) x̂ drives a mean u(y) ∝ sin(4y): its projection is clearly positive
    # (measured ≈ 0.5 per trajectory over longer runs), while v has no sin(4x) mean profile.
    # Catches a swapped (x, y) transpose or swapped channels.
    centres = (np.arange(64) + 0.5) * 2 * math.pi / 64
    u, v = flow64[:, :, 0], flow64[:, :, 1]
    u_profile = 2 * (u.mean(axis=(1, -1)) * np.sin(4 * centres)).mean(axis=-1)
    v_profile = 2 * (v.mean(axis=(1, -2)) * np.sin(4 * centres)).mean(axis=-1)
    assert (u_profile > 0.2).all(), u_profile
    assert (np.abs(v_profile) < 0.5 * u_profile).all(), (u_profile, v_profile)


def test_coarsened_run_is_block_average_of_fine_run() -> None:
    fine = next(simulate_kolmogorov(1, 3, size=32, spinup=1, seed=3, progress=False))
    coarse = next(simulate_kolmogorov(1, 3, size=32, coarsen=2, spinup=1, seed=3, progress=False))
    assert coarse.shape == (1, 3, 2, 16, 16)
    expected = fine.reshape(1, 3, 2, 16, 2, 16, 2).mean(axis=(-3, -1))
    np.testing.assert_allclose(coarse, expected, rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_batch_size() -> None:
    together = next(simulate_kolmogorov(3, 2, size=16, spinup=2, seed=9, progress=False))
    one_by_one = np.concatenate(
        list(
            simulate_kolmogorov(
                3, 2, size=16, spinup=2, seed=9, batch_size=1, progress=False
            )
        )
    )
    np.testing.assert_array_equal(together, one_by_one)


# --- the zarr store ----------------------------------------------------------------------------


def test_store_layout(small_store) -> None:
    ds = xr.open_zarr(small_store)
    assert dict(ds.sizes) == {"trajectory": 3, "time": 3, "y": 16, "x": 16}
    for name, long_name in (("u", "velocity along x"), ("v", "velocity along y")):
        variable = ds[name]
        assert variable.dims == ("trajectory", "time", "y", "x")
        assert variable.dtype == np.float32
        assert variable.encoding["chunks"] == (1, 1, 16, 16)
        assert variable.attrs["long_name"] == long_name
        assert variable.attrs["units"] == "1"
        assert np.isfinite(variable.values).all()
    np.testing.assert_array_equal(ds.trajectory.values, [0, 1, 2])
    assert np.issubdtype(ds.trajectory.dtype, np.integer)
    np.testing.assert_allclose(ds.time.values, [0.4, 0.6, 0.8])
    assert ds.time.attrs == {"long_name": "model time", "units": "1"}
    centres = (np.arange(16) + 0.5) * 2 * math.pi / 16
    for axis in ("y", "x"):
        np.testing.assert_allclose(ds[axis].values, centres)
        assert ds[axis].attrs["periodic"] == 1
        assert ds[axis].attrs["axis"] == axis.upper()
        assert ds[axis].attrs["units"] == "1"
        assert ds[axis].attrs["long_name"]
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert "jax-cfd" in ds.attrs["source"]
    assert ds.attrs["title"] and "write_kolmogorov_zarr" in ds.attrs["history"]
    for key, value in dict(
        reynolds=1000.0, forcing_wavenumber=4.0, drag=0.1, dt=0.2, spinup=2,
        solver_size=16, coarsen=1, seed=5,
    ).items():
        assert ds.attrs[key] == value, key


def test_store_is_deterministic_and_matches_simulator(small_store, tmp_path) -> None:
    again = write_kolmogorov_zarr(tmp_path / "again.zarr", batch_size=3, **SMALL)
    other = write_kolmogorov_zarr(tmp_path / "other.zarr", batch_size=2, **{**SMALL, "seed": 6})
    first, second, third = (xr.open_zarr(p) for p in (small_store, again, other))
    for name in ("u", "v"):
        # Same seed, different batch size: identical.
        np.testing.assert_array_equal(first[name].values, second[name].values)
        assert not np.allclose(first[name].values, third[name].values)
    direct = np.concatenate(
        list(simulate_kolmogorov(**{k: v for k, v in SMALL.items()}, batch_size=2))
    )
    np.testing.assert_array_equal(first.u.values, direct[:, :, 0])
    np.testing.assert_array_equal(first.v.values, direct[:, :, 1])
    # Each trajectory starts from its own initial condition.
    assert not np.allclose(first.u.values[0], first.u.values[1])


def test_existing_output_is_kept_without_overwrite(tmp_path) -> None:
    out = tmp_path / "existing.zarr"
    out.mkdir()
    (out / "marker").write_text("keep me")
    with pytest.raises(LatentdaError, match="existing.zarr"):
        write_kolmogorov_zarr(out, **SMALL)
    assert (out / "marker").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.zarr"]

    write_kolmogorov_zarr(out, overwrite=True, **SMALL)
    assert not (out / "marker").exists()
    assert xr.open_zarr(out).sizes["trajectory"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.zarr"]


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_a_failure_after_a_batch_keeps_it_for_resume(tmp_path, monkeypatch, exception) -> None:
    """A failure after the first batch (its trajectory finished) keeps OUT.partial and says so; the
    output itself is never created. One before any batch leaves nothing (the next test)."""
    real = kolmogorov.simulate_kolmogorov

    def failing_after_first_batch(*args, **kwargs):
        batches = real(*args, **kwargs)

        def generate():
            yield next(batches)  # written to the partial store
            raise exception("simulated failure")

        return generate()

    monkeypatch.setattr(kolmogorov, "simulate_kolmogorov", failing_after_first_batch)
    message = "1 finished trajectories kept in .*broken.zarr.partial: run again with --resume" if exception is RuntimeError \
        else "simulated failure"
    with pytest.raises(exception, match=message):
        write_kolmogorov_zarr(tmp_path / "broken.zarr", batch_size=1, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.zarr.partial"]


@pytest.mark.parametrize("number", ["SIGINT", "SIGTERM"])
def test_an_interrupt_during_a_batch_write_takes_effect_once_it_is_written(tmp_path, monkeypatch, number) -> None:
    """The signal arrives inside the second batch's to_zarr (zarr 3 writes its chunks in a background
    thread, which an interrupt there would leave writing): the batch is written whole and counted,
    then the interrupt is raised, the third batch is never written."""
    import os
    import signal

    from latentda.cli import Terminated, _terminate

    real, calls = xr.Dataset.to_zarr, []

    def write_interrupted(self, *args, **kwargs):
        calls.append("write")
        if len(calls) == 3:
            os.kill(os.getpid(), getattr(signal, number))  # delivered at once to the handler in place
        result = real(self, *args, **kwargs)
        calls.append("written")
        return result

    monkeypatch.setattr(xr.Dataset, "to_zarr", write_interrupted)
    previous = signal.signal(signal.SIGTERM, _terminate)  # as the command line installs it
    # Python's own Ctrl-C handler, also where the suite was started in the background (SIGINT then ignored)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Terminated if number == "SIGTERM" else KeyboardInterrupt):
            write_kolmogorov_zarr(tmp_path / "broken.zarr", batch_size=1, **SMALL)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers of before are back
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, ignored)
    assert calls == ["write", "written", "write", "written"]  # the second batch's write completed first
    import zarr

    from latentda.simulate.store import COMPLETE_ATTR

    assert [p.name for p in tmp_path.iterdir()] == ["broken.zarr.partial"]  # kept for --resume, both batches counted
    assert zarr.open_group(tmp_path / "broken.zarr.partial", mode="r").attrs[COMPLETE_ATTR] == 2


def _interrupt_before_batch(monkeypatch, module, name: str, batch: int) -> None:
    """``module.name`` (a batch generator taking ``first``) raising KeyboardInterrupt before its batch
    number ``batch`` (counted from 0) of a run from the start."""
    real = getattr(module, name)

    def interrupted(*args, **kwargs):
        batches = real(*args, **kwargs)
        if kwargs.get("first", args[-1] if name == "simulate_gaussian" and len(args) > 6 else 0):
            return batches  # a resumed run goes through

        def generate():
            for count, values in enumerate(batches):
                if count == batch:
                    raise KeyboardInterrupt
                yield values
        return generate()

    monkeypatch.setattr(module, name, interrupted)


def test_interrupted_simulation_resumes_to_the_uninterrupted_store(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C after two batches keeps 4 finished trajectories in OUT.partial; without --resume, with
    another seed, or with other library versions than those it recorded, the next run is refused (a
    store of a latentda that recorded none is not checked for them); a batch cut short by a kill (its
    count not recorded) is dropped; resumed with another batch size, the store is bit for bit the
    uninterrupted run's."""
    import json

    import zarr

    from latentda import cli
    from latentda.simulate import gaussian
    from latentda.simulate.store import COMPLETE_ATTR, SETTINGS_ATTR

    args = ["simulate", "gaussian", "--size", "16", "--trajectories", "7", "--steps", "3", "--quiet"]
    assert cli.main([*args, "--batch-size", "2", "--out", str(tmp_path / "straight.zarr")]) == 0
    out = tmp_path / "g.zarr"
    with monkeypatch.context() as patch:
        _interrupt_before_batch(patch, gaussian, "simulate_gaussian", 2)
        assert cli.main([*args, "--batch-size", "2", "--out", str(out)]) == 130
    partial = tmp_path / "g.zarr.partial"
    assert not out.exists() and zarr.open_group(partial, mode="r").attrs[COMPLETE_ATTR] == 4
    assert cli.main([*args, "--batch-size", "2", "--out", str(out)]) == 2  # refused: the partial store is kept
    assert cli.main([*args, "--seed", "1", "--resume", "--out", str(out)]) == 2  # other settings
    group = zarr.open_group(partial, mode="r+", use_consolidated=False)
    recorded = json.loads(group.attrs[SETTINGS_ATTR])
    group.attrs[SETTINGS_ATTR] = json.dumps({**recorded, "library_versions": {"numpy": "1.0"}})
    capsys.readouterr()
    assert cli.main([*args, "--resume", "--out", str(out)]) == 2
    assert f"other library versions (numpy 1.0 then, {np.__version__} now)" in capsys.readouterr().err
    group.attrs[SETTINGS_ATTR] = json.dumps({k: v for k, v in recorded.items() if k != "library_versions"})  # an older latentda's
    # as if killed while appending trajectory 3: its count not written, u resized on disk (not in the consolidated
    # metadata, written last), a file zarr writes before renaming it left behind
    group = zarr.open_group(partial, mode="r+", use_consolidated=False)
    group.attrs[COMPLETE_ATTR] = 3
    group["u"].resize((5, *group["u"].shape[1:]))
    (partial / f".zattrs.{'0' * 32}.partial").write_text("{")
    assert cli.main([*args, "--batch-size", "3", "--resume", "--out", str(out)]) == 0
    straight, resumed = xr.open_zarr(tmp_path / "straight.zarr"), xr.open_zarr(out)
    xr.testing.assert_identical(resumed.drop_attrs(), straight.drop_attrs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.zarr", "straight.zarr"]
    assert not list(out.rglob("*.partial"))
    assert COMPLETE_ATTR not in resumed.attrs and resumed.attrs[SETTINGS_ATTR] == straight.attrs[SETTINGS_ATTR]


def test_a_simulation_stopped_before_its_rename_resumes_without_simulating(tmp_path, monkeypatch) -> None:
    """Every trajectory finished, stopped before the store is moved into place: --resume only moves it."""
    from latentda import cli
    from latentda.simulate import gaussian, store

    args = ["simulate", "gaussian", "--size", "16", "--trajectories", "3", "--steps", "2", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "straight.zarr")]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(store, "atomic_path", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert cli.main([*args, "--out", str(tmp_path / "g.zarr")]) == 130
    calls = []
    real_batches = gaussian._batches
    monkeypatch.setattr(gaussian, "_batches", lambda *a, **k: calls.append(a) or real_batches(*a, **k))
    assert cli.main([*args, "--resume", "--out", str(tmp_path / "g.zarr")]) == 0
    assert [call[-1] for call in calls] == [0, 3]  # the arguments checked (never run), then from index 3 on: none
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "g.zarr").drop_attrs(),
                                xr.open_zarr(tmp_path / "straight.zarr").drop_attrs())


def test_interrupted_kolmogorov_run_resumes(tmp_path, monkeypatch, small_store) -> None:
    """The Kolmogorov flow's trajectories from index 1 on, batched (1, 2) instead of the straight run's
    (0, 1), (2): the same store."""
    out = tmp_path / "flow.zarr"
    with monkeypatch.context() as patch:
        _interrupt_before_batch(patch, kolmogorov, "simulate_kolmogorov", 1)
        with pytest.raises(KeyboardInterrupt):
            write_kolmogorov_zarr(out, batch_size=1, **SMALL)
    write_kolmogorov_zarr(out, batch_size=2, resume=True, **SMALL)
    xr.testing.assert_identical(xr.open_zarr(out).drop_attrs(), xr.open_zarr(small_store).drop_attrs())


def test_interrupted_overwrite_keeps_previous_store(tmp_path, monkeypatch) -> None:
    out = tmp_path / "flow.zarr"
    out.mkdir()
    (out / "marker").write_text("previous")

    def failing(*args, **kwargs):
        raise RuntimeError("simulated failure")
        yield  # pragma: no cover

    monkeypatch.setattr(kolmogorov, "simulate_kolmogorov", failing)
    with pytest.raises(RuntimeError):
        write_kolmogorov_zarr(out, overwrite=True, **SMALL)
    assert (out / "marker").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["flow.zarr"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(trajectories=0), "trajectories"),
        (dict(trajectories=1.5), "1.5"),
        (dict(steps=0), "steps"),
        (dict(size=30, coarsen=4), "30"),
        (dict(coarsen=0), "coarsen"),
        (dict(size=8), "size"),
        (dict(dt=-0.1), "-0.1"),
        (dict(dt=float("nan")), "nan"),
        (dict(spinup=-1), "spinup"),
        (dict(reynolds=0.0), "reynolds"),
        (dict(seed=-3), "-3"),
        (dict(batch_size=0), "batch_size"),
        (dict(steps=True), "True"),
    ],
)
def test_invalid_arguments(tmp_path, changes, named) -> None:
    arguments = {**SMALL, **changes}
    with pytest.raises(LatentdaError, match=named) as error:
        write_kolmogorov_zarr(tmp_path / "bad.zarr", **arguments)
    assert "\n" not in str(error.value)
    with pytest.raises(LatentdaError, match=named):
        simulate_kolmogorov(**arguments)  # checked at call time, not on first iteration
    assert list(tmp_path.iterdir()) == []


def test_no_output_when_progress_disabled(tmp_path, capsys) -> None:
    write_kolmogorov_zarr(tmp_path / "quiet.zarr", **SMALL)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# --- optional dependency and jax compatibility -------------------------------------------------


def test_missing_jax_cfd_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "jax_cfd", None)
    monkeypatch.setitem(sys.modules, "jax_cfd.base", None)
    with pytest.raises(LatentdaError, match=r"latentda\[sim\]"):
        simulate_kolmogorov(1, 1, progress=False)


def test_shim_restores_removed_tree_aliases() -> None:
    import jax

    newer_jax = types.SimpleNamespace()  # a jax without the top-level tree_* aliases
    restored = kolmogorov._restore_removed_jax_tree_aliases(newer_jax)
    assert {"tree_map", "tree_leaves", "tree_flatten", "tree_unflatten"} <= set(restored)
    assert newer_jax.tree_map is jax.tree_util.tree_map
    assert newer_jax.tree_leaves([1, (2, 3)]) == [1, 2, 3]
    # Present aliases are left alone.
    marker = object()
    older_jax = types.SimpleNamespace(tree_map=marker)
    assert "tree_map" not in kolmogorov._restore_removed_jax_tree_aliases(older_jax)
    assert older_jax.tree_map is marker
