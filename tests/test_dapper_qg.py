"""`latentda simulate dapper-qg`: DAPPER's own QG model written as a latentda dataset. Needs DAPPER and
its Fortran QG module (`make dapper`); skipped cleanly otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.simulate import dapper_qg

pytest.importorskip("dapper")
if not dapper_qg.available():
    pytest.skip("DAPPER's QG Fortran module is not built (make dapper)", allow_module_level=True)


@pytest.fixture(scope="module")
def qg_store(tmp_path_factory):
    from latentda.cli import main

    out = tmp_path_factory.mktemp("qg") / "qg.zarr"
    code = main(["simulate", "dapper-qg", "--out", str(out), "--trajectories", "3", "--steps", "3", "--spinup", "2",
                 "--seed", "5", "--batch-size", "2", "--quiet"])
    assert code in (None, 0)
    return out


def test_layout_and_attributes(qg_store):
    import xarray as xr

    from latentda.data import FieldLayout

    dataset = xr.open_zarr(qg_store)
    assert dict(dataset["psi"].sizes) == {"trajectory": 3, "time": 3, "y": 129, "x": 129}
    assert dataset["psi"].dtype == np.float32
    assert dataset.attrs["Conventions"] == "CF-1.10" and dataset.attrs["dt"] == 5.0
    np.testing.assert_allclose(dataset["time"].values, [10.0, 15.0, 20.0])
    np.testing.assert_allclose(dataset["x"].values[[0, -1]], [0.0, 1.0])
    psi = dataset["psi"].values
    assert np.isfinite(psi).all() and psi.std() > 1.0
    assert np.abs(psi[..., 0, :]).max() == 0 and np.abs(psi[..., :, -1]).max() == 0  # closed box: psi = 0 on the boundary
    layout = FieldLayout.from_dataset(dataset, None)
    assert layout.channels == ["psi"] and layout.shape == (129, 129) and layout.periodic == (False, False)


def test_states_are_dapper_model_steps_and_independent_of_batching(qg_store):
    import xarray as xr

    from dapper.mods.QG import sakov2008

    psi = xr.open_zarr(qg_store)["psi"].values
    # one time step of the dataset = DAPPER's model.step over dtout, on DAPPER's state vector (C-order psi[y, x])
    state = psi[1, 0].astype(np.float64).reshape(-1)
    stepped = sakov2008.model.step_1(state, 0.0, sakov2008.model.prms["dtout"])  # what HMM.Dyn runs per member
    np.testing.assert_allclose(stepped.reshape(129, 129), psi[1, 1], rtol=1e-4, atol=1e-4 * np.abs(psi[1, 1]).max())
    # trajectory 2 alone, in a batch of its own, is the same
    alone = next(iter(dapper_qg.simulate_dapper_qg(1, 3, spinup=2, seed=5, progress=False)))
    assert not np.allclose(alone[0], psi[2])  # trajectory 0 of seed 5 is not trajectory 2
    batches = list(dapper_qg.simulate_dapper_qg(3, 3, spinup=2, seed=5, batch_size=3, progress=False))
    np.testing.assert_array_equal(batches[0], psi)
    assert not np.allclose(psi[0], psi[1])


def test_parallel_workers_give_the_same_states(qg_store):
    import xarray as xr

    psi = xr.open_zarr(qg_store)["psi"].values
    batches = list(dapper_qg.simulate_dapper_qg(3, 3, spinup=2, seed=5, batch_size=2, workers=2, progress=False))
    assert [len(batch) for batch in batches] == [2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), psi)


def test_an_interrupted_run_resumes_with_workers_to_the_same_store(qg_store, tmp_path, monkeypatch):
    """Ctrl-C after the first batch (trajectories 0, 1), then --resume in 2 worker processes: the store
    of the uninterrupted run (its trajectory 2 simulated from index 2 on)."""
    import xarray as xr

    from latentda.cli import main

    real = dapper_qg._batches

    def interrupted(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    args = ["simulate", "dapper-qg", "--out", str(tmp_path / "qg.zarr"), "--trajectories", "3", "--steps", "3",
            "--spinup", "2", "--seed", "5", "--batch-size", "2", "--quiet"]
    with monkeypatch.context() as patch:
        patch.setattr(dapper_qg, "_batches", interrupted)
        assert main(args) == 130
    assert main([*args, "--resume", "--workers", "2"]) == 0
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "qg.zarr").drop_attrs(), xr.open_zarr(qg_store).drop_attrs())


def test_bad_arguments(tmp_path):
    from latentda.cli import main
    from latentda.errors import LatentdaError

    with pytest.raises(LatentdaError):
        dapper_qg.write_dapper_qg_zarr(tmp_path / "a.zarr", trajectories=0, steps=2)
    assert main(["simulate", "dapper-qg", "--out", str(tmp_path / "b.zarr"), "--coarsen", "2", "--quiet"]) == 2
    assert not (tmp_path / "b.zarr").exists()
    with pytest.raises(LatentdaError, match="workers"):
        dapper_qg.write_dapper_qg_zarr(tmp_path / "c.zarr", trajectories=2, steps=2, workers=0)
    assert main(["simulate", "gaussian", "--out", str(tmp_path / "d.zarr"), "--workers", "2", "--quiet"]) == 2
    assert not (tmp_path / "d.zarr").exists()


def test_the_benchmark_scores_the_letkf_and_the_filter_on_one_experiment(tmp_path):
    """tools/bench_dapper_qg.py on 3 cycles: DAPPER's LETKF and the latentda filter (the shipped QG pipeline,
    2 members, 2 sampler steps) on the same truth; its JSON records the experiment and each method's rmse
    and spread of the analyses, finite, over the cycles after the burn-in."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(root / "tools" / "bench_dapper_qg.py"), "--T", "15", "--burn-in", "5",
                             "--methods", "letkf", "latentda-filter", "--pipeline", str(root / "pretrained" / "qg"),
                             "--members", "2", "--settings", '{"steps": 2}', "--json", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900,
                            env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2", "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["experiment"]["T"] == 15 and results["experiment"]["dto"] == 5
    for name in ("letkf", "latentda-filter"):
        scores = results["methods"][name]
        assert all(np.isfinite(scores[key]) and scores[key] > 0 for key in ("rmse.a", "spread.a")), (name, scores)
    assert "LatentDAPipeline(" in result.stdout  # the method's row names the pipeline it ran
