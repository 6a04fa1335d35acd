"""reanalyze end to end on a tiny pipeline: resume keeps finished members; guidance pulls to the data;
bad observations fail cleanly without writing."""

import numpy as np
import pytest
import torch

from conftest import interrupt_reanalyses_after, make_observed_pipeline, run_torchrun
from latentda import cli
from latentda.data import FieldLayout, open_dataset, write_dataset
from latentda.data.ensemble_store import EnsembleWriter
from latentda.errors import LatentdaError
from latentda.pipeline import LatentDAPipeline
from latentda.posterior import reanalysis


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained but complete pipeline, a truth and sparse observations of it."""
    root = tmp_path_factory.mktemp("reanalyze")
    _, _, truth_path, observations = make_observed_pipeline(root)
    return root, root / "pipeline", truth_path, observations


_interrupt_after = interrupt_reanalyses_after


def test_interrupted_reanalysis_resumes_with_identical_members(setup, tmp_path, monkeypatch):
    root, folder, truth, observations = setup
    args = ["reanalyze", "--pipeline", str(folder), "--observations", str(observations), "--members", "3",
            "--steps", "3", "--iterations", "1", "--quiet"]
    straight = tmp_path / "straight.zarr"
    assert cli.main(args + ["--out", str(straight)]) == 0

    real = _interrupt_after(monkeypatch, 2)
    killed = tmp_path / "killed.zarr"
    assert cli.main(args + ["--out", str(killed)]) == 130
    assert not killed.exists()
    partial = open_dataset(tmp_path / "killed.zarr.partial")
    assert partial["completed"].values.tolist() == [1, 1, 0]
    assert cli.main(args + ["--out", str(killed)]) == 2  # a partial run exists: needs --resume
    monkeypatch.setattr(reanalysis, "posterior_members", real)
    calls = []
    monkeypatch.setattr(reanalysis, "posterior_members", lambda p, o, members, *a: (calls.append(members), real(p, o, members, *a))[1])
    assert cli.main(args + ["--out", str(killed), "--resume"]) == 0
    assert calls == [[2]]  # only the unfinished member was computed
    a, b = open_dataset(straight).load(), open_dataset(killed).load()
    assert "completed" not in b
    np.testing.assert_array_equal(a["u"].values, b["u"].values)
    assert not (tmp_path / "killed.zarr.partial").exists()


def test_guidance_pulls_towards_observations(setup, tmp_path):
    """The untrained backbone outputs 0, so the prior denoiser is that of N(0, I) latents; a few
    observations (fewer than latent dimensions) must then be fitted better than by the prior. The
    random decoder's range is narrow, so the fit cannot reach the noise level; exactness is tested
    against closed forms in test_guidance.py."""
    root, folder, truth, _ = setup
    operator_file = tmp_path / "op.yaml"
    operator_file.write_text("observations:\n  - {name: o, variables: [u], fraction: 0.1, noise_std: 0.1}\n")
    observations = tmp_path / "few.nc"
    assert cli.main(["observe", "--truth", str(truth), "--operator", str(operator_file), "--out", str(observations)]) == 0
    pipeline = LatentDAPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    obs = open_dataset(observations)
    operator = pipeline.observation_operator(obs)
    prior = pipeline.sample(length=6, members=2, steps=16, method="ddpm", seed=1)
    posterior = pipeline.reanalyze(obs, members=2, steps=16, sampler="ddpm", iterations=3)
    ratio = lambda ds: operator.residual_ratio(torch.from_numpy(np.stack([  # noqa: E731
        pipeline.layout.to_array(ds.isel(realization=m)) for m in range(2)])).double()).mean()
    assert ratio(posterior) < 0.75 * ratio(prior)


def test_bad_observations_write_nothing(setup, tmp_path, capsys):
    root, folder, truth, observations = setup
    obs = open_dataset(observations).load()
    cases = {
        "sigma": obs.assign(o_u=obs["o_u"].assign_attrs(noise_std=-1.0)),
        "variable": obs.assign(o_u=obs["o_u"].assign_attrs(latentda_source="temperature")),
        "empty": obs.assign(o_u=obs["o_u"] * np.nan, o_v=obs["o_v"] * np.nan),
        "times": obs.assign_coords(time=obs["time"] * 2),
        "short": obs.isel(time=slice(0, 3)),
    }
    messages = {"sigma": "noise_std must be positive", "variable": "unknown variable 'temperature'",
                "empty": "all NaN", "times": "model's step is 0.2", "short": "fewer than the model's window"}
    for name, dataset in cases.items():
        path = write_dataset(dataset, tmp_path / f"{name}.nc")
        out = tmp_path / f"{name}.zarr"
        code = cli.main(["reanalyze", "--pipeline", str(folder), "--observations", str(path), "--members", "1",
                         "--steps", "2", "--out", str(out), "--quiet"])
        assert code == 2, name
        assert messages[name] in capsys.readouterr().err, name
        assert not out.exists() and not (tmp_path / f"{name}.zarr.partial").exists(), name


def test_ensemble_writer_refuses_mismatched_resume(setup, tmp_path):
    root, folder, truth, observations = setup
    layout = FieldLayout.from_dataset(open_dataset(truth))
    time = open_dataset(truth)["time"]
    writer = EnsembleWriter(tmp_path / "e.zarr", layout, time, 2)
    writer.write(0, np.zeros((6, 2, 8, 8), np.float32))
    writer.release()  # that run stopped (interrupted): the output is free for a resume
    with pytest.raises(LatentdaError, match="other members or times"):
        EnsembleWriter(tmp_path / "e.zarr", layout, time, 3, resume=True)
    with pytest.raises(LatentdaError, match="not finished"):
        EnsembleWriter(tmp_path / "e.zarr", layout, time, 2, resume=True).finalize()


def test_output_is_cf_compliant_in_the_model_order(setup, tmp_path):
    """``Conventions``, CF attributes on every coordinate (``axis`` on time, y and x), the variables
    in the layout's channel order (a zarr store lists its arrays by name: the dataset returned and
    a netCDF file are in the model's order), and no global attribute of the training data."""
    root, folder, truth, observations = setup
    pipeline = LatentDAPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.layout.attrs = {"title": "the training data", "history": "stale"}  # as read from an input file
    outputs = [pipeline.reanalyze(open_dataset(observations), 1, steps=2, out=tmp_path / f"post{suffix}")
               for suffix in (".zarr", ".nc")]
    outputs.append(open_dataset(tmp_path / "post.nc"))
    for output in outputs:
        assert list(output.data_vars) == pipeline.layout.channels
        assert output.attrs["Conventions"] == "CF-1.10" and "history" not in output.attrs
        assert output.attrs["title"] == "latentda reanalysis (posterior ensemble)"
        for name, coordinate in output.coords.items():
            assert {"long_name", "standard_name"} & set(coordinate.attrs), name
        assert [output[name].attrs.get("axis") for name in ("time", "y", "x")] == ["T", "Y", "X"]


def test_chunked_decoder_guidance_equals_full_graph(setup):
    """The memory-lean operator computes the same guided mean as the one-graph operator."""
    from latentda.posterior.guidance import MMPSDenoiser
    from latentda.posterior.reanalysis import LatentOperator

    root, folder, truth, observations = setup
    pipeline = LatentDAPipeline.from_pretrained(folder)
    operator = pipeline.observation_operator(open_dataset(observations))
    y, noise_std = operator.observed()
    blanket = pipeline.trajectory_denoiser()
    z = torch.randn(2, operator.length, *pipeline.latent_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    full = MMPSDenoiser(blanket, LatentOperator(pipeline, operator), y, noise_std, iterations=2)(z, sigma)
    chunked = MMPSDenoiser(blanket, LatentOperator(pipeline, operator, chunk=5), y, noise_std, iterations=2)(z, sigma)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)


def test_compiled_denoiser_guidance_equals_eager(setup):
    """pipeline.compile(): the guided mean (forward and VJPs through the compiled transformer blocks)
    equals the eager one ("aot_eager" traces the same graphs as inductor without building kernels)."""
    from latentda.posterior.guidance import MMPSDenoiser
    from latentda.posterior.reanalysis import LatentOperator

    root, folder, truth, observations = setup
    means = []
    for compiled, perturbed in ((False, False), (False, True), (True, True)):
        pipeline = LatentDAPipeline.from_pretrained(folder)
        if perturbed:  # the same random weights in both: the tiny prior's zero output layer would hide the blocks
            torch.manual_seed(5)
            with torch.no_grad():
                for parameter in pipeline.backbone.parameters():
                    parameter.add_(0.05 * torch.randn_like(parameter))
        if compiled:
            pipeline.compile(backend="aot_eager")
        operator = pipeline.observation_operator(open_dataset(observations))
        y, noise_std = operator.observed()
        z = torch.randn(1, operator.length, *pipeline.latent_shape, generator=torch.Generator().manual_seed(0))
        guided = MMPSDenoiser(pipeline.trajectory_denoiser(), LatentOperator(pipeline, operator), y, noise_std, iterations=2)
        means.append(guided(z, torch.tensor(0.7)))
    assert any(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in pipeline.backbone.modules())
    assert (means[1] - means[0]).abs().max() > 1e-2  # the blocks shape the guided mean
    torch.testing.assert_close(means[2], means[1], rtol=1e-4, atol=1e-5)
    # inductor would free the saved tensors after the first of the step's VJPs (donated buffers)
    assert torch._functorch.config.donated_buffer is False


def test_two_processes_share_the_members_and_match_one(setup, tmp_path):
    """torchrun with 2 CPU processes: members dealt over ranks into one output, identical to one process."""
    root, folder, truth, observations = setup
    args = ["reanalyze", "--pipeline", str(folder), "--observations", str(observations), "--members", "3",
            "--steps", "2", "--iterations", "1", "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "one.zarr")]) == 0
    run_torchrun(["-m", "latentda.cli", *args, "--out", str(tmp_path / "two.zarr")])
    one, two = open_dataset(tmp_path / "one.zarr").load(), open_dataset(tmp_path / "two.zarr").load()
    # identical up to float rounding (the processes run 1 thread each, the single one 2: other reduction order)
    np.testing.assert_allclose(two["u"].values, one["u"].values, atol=1e-4)
    assert np.abs(two["u"].values - one["u"].values).max() < 1e-3 * np.abs(one["u"].values).max()


def test_resume_with_other_settings_is_refused(setup, tmp_path, monkeypatch):
    root, folder, truth, observations = setup
    real = _interrupt_after(monkeypatch, 1)
    args = ["reanalyze", "--pipeline", str(folder), "--observations", str(observations), "--members", "2",
            "--steps", "2", "--iterations", "1", "--quiet", "--out", str(tmp_path / "p.zarr")]
    assert cli.main(args) == 130
    monkeypatch.setattr(reanalysis, "posterior_members", real)
    assert cli.main(args + ["--resume", "--seed", "7"]) == 2  # other seed: members would mix
    # under 2 processes the main one finds it (creating the store): both stop with its one line
    two = run_torchrun(["-m", "latentda.cli", *args, "--resume", "--seed", "7"], check=False)
    assert two.returncode != 0 and two.stderr.count("error: ") == 2 and "other settings (seed" in two.stderr, two.stderr[-2000:]
    assert "gloo" not in two.stderr and (tmp_path / "p.zarr.partial").is_dir()  # the finished member kept
    assert cli.main(args + ["--resume"]) == 0
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the finished store's metadata consolidated: a user's xr.open_zarr does not warn
        assert xr.open_zarr(tmp_path / "p.zarr").sizes["realization"] == 2


def _split_blankets_worker() -> None:
    """Run by each of 2 torchrun processes: the windows shared out over the processes give the
    one-process trajectory denoiser's values and vector-Jacobian products, 1/P of the windows each."""
    import torch
    import torch.distributed as dist

    from latentda.diffusion.blankets import BlanketDenoiser
    from latentda.diffusion.distributed import DistributedBlanketDenoiser

    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same x, v and denoiser on every process
    window, features = 4, 3
    mixing = torch.randn(window * features, window * features) / 3
    evaluated = []

    def window_denoiser(x, sigma, context):  # mixes the states of a window: not local in time
        evaluated.append(x.shape[0])
        out = torch.tanh(x.reshape(x.shape[0], -1) @ mixing).reshape(x.shape) * sigma.reshape(-1, 1, 1)
        return out + context.sum(-1, keepdim=True)

    x, context, sigma = torch.randn(2, 8, features), torch.randn(2, 8, 5), torch.tensor(0.7)  # windows at 0, 2, 4
    one = BlanketDenoiser(window_denoiser, window, overlap=2, batch_windows=1)
    split = DistributedBlanketDenoiser(window_denoiser, window, overlap=2, batch_windows=1)
    x_one, x_split = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected = one(x_one, sigma, context)
    evaluated.clear()
    got = split(x_split, sigma, context)
    assert sum(evaluated) == 2 * (2 if dist.get_rank() == 0 else 1), evaluated  # windows 0, 4 | 2 (+ padding)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    for k in range(2):  # several VJPs through one graph, as the guidance does
        v = torch.randn(expected.shape)
        grad_one = torch.autograd.grad(expected, x_one, v, retain_graph=True)[0]
        grad_split = torch.autograd.grad(got, x_split, v, retain_graph=True)[0]
        torch.testing.assert_close(grad_split, grad_one, rtol=1e-6, atol=1e-6)
    print(f"rank {dist.get_rank()}: values and VJPs match")
    dist.destroy_process_group()


def test_split_blankets_values_and_gradients_equal_one_process(tmp_path):
    """The two autograd functions (copy to / gather from the region) under torchrun with 2 processes."""
    import inspect

    script = tmp_path / "worker.py"
    script.write_text(inspect.getsource(_split_blankets_worker) + "\n\n_split_blankets_worker()\n")
    result = run_torchrun([str(script)])
    assert result.stdout.count("values and VJPs match") == 2


def test_split_blankets_alone_is_the_plain_denoiser(setup):
    from latentda.diffusion.blankets import BlanketDenoiser
    from latentda.diffusion.distributed import check_blanket_split

    root, folder, truth, observations = setup
    pipeline = LatentDAPipeline.from_pretrained(folder)
    assert type(pipeline.trajectory_denoiser(split_blankets=True)) is BlanketDenoiser  # not distributed: no overhead
    check_blanket_split(8, 4, 2, 3)  # windows at 0, 2, 4: one each
    with pytest.raises(LatentdaError, match="has 1 blanket window.*fewer than the 2 processes"):
        check_blanket_split(4, 4, 2, 2)


def test_two_processes_split_the_blankets_and_match_one(setup, tmp_path):
    """torchrun with 2 CPU processes, --split blankets, a trajectory of 2K states (3 windows of K = 4):
    both processes sample every member, each evaluates its share of the windows; output = one process."""
    from conftest import make_box_dataset

    root, folder, _, _ = setup
    truth = write_dataset(make_box_dataset(trajectories=1, times=8, size=8).isel(trajectory=0, drop=True), tmp_path / "truth.nc")
    observations = tmp_path / "obs.nc"
    assert cli.main(["observe", "--truth", str(truth), "--operator", str(root / "op.yaml"), "--out", str(observations),
                     "--quiet"]) == 0
    args = ["reanalyze", "--pipeline", str(folder), "--observations", str(observations), "--members", "2",
            "--steps", "2", "--iterations", "1", "--split", "blankets", "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same float reduction order
    try:
        assert cli.main(args + ["--out", str(tmp_path / "one.zarr")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = run_torchrun(["-m", "latentda.cli", *args, "--out", str(tmp_path / "two.zarr")])
    assert result.stdout.count("wrote") == 1  # the main process alone writes
    one, two = open_dataset(tmp_path / "one.zarr").load(), open_dataset(tmp_path / "two.zarr").load()
    assert "completed" not in two and two.sizes["realization"] == 2
    for name in ("u", "v"):
        scale = np.abs(one[name].values).max()
        np.testing.assert_allclose(two[name].values, one[name].values, rtol=1e-5, atol=1e-5 * scale)
