"""Datetime data: calendar features, a calendar-conditioned prior end to end (train, sample, reanalyze,
forecast), and clear errors when times are missing."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_latlon_dataset, train_tiny_prior
from latentda import cli
from latentda.components import save_autoencoder
from latentda.data import FieldLayout, compute_statistics, open_dataset, write_dataset
from latentda.data.calendar import calendar_features
from latentda.encoding import encode_dataset
from latentda.errors import LatentdaError
from latentda.nn.autoencoder import AutoEncoder
from latentda.pipeline import LatentDAPipeline


def test_calendar_features():
    times = pd.to_datetime(["2021-01-01T00:00", "2021-01-01T06:00", "2021-07-02T12:00"]).values
    f = calendar_features(times)
    np.testing.assert_allclose(f[0, :2], [0, 1], atol=1e-6)  # midnight
    np.testing.assert_allclose(f[1, :2], [1, 0], atol=1e-6)  # 06:00
    np.testing.assert_allclose(f[2, 3], np.cos(2 * np.pi * 182.5 / 365.25), atol=1e-5)  # mid-year
    assert calendar_features(np.arange(3.0)) is None


@pytest.fixture(scope="module")
def calendar_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("calendar")
    dataset = make_latlon_dataset(times=24)
    data = write_dataset(dataset, root / "era.zarr")
    layout = FieldLayout.from_dataset(dataset)
    torch.manual_seed(0)
    autoencoder = AutoEncoder(in_channels=3, latent_channels=2, hidden_channels=[8, 8], blocks_per_stage=1,
                              sample_size=list(layout.shape), periodic=list(layout.periodic))
    folder = save_autoencoder(root / "ae", autoencoder, layout, compute_statistics(dataset, layout, progress=False))
    latents = encode_dataset(folder, data, root / "latents.zarr", progress=False)
    return root, dataset, LatentDAPipeline.from_pretrained(train_tiny_prior(latents, root / "run"))


def test_calendar_prior_end_to_end(calendar_pipeline, tmp_path):
    root, dataset, pipeline = calendar_pipeline
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.calendar and pipeline.time_units == "seconds" and pipeline.time_step == 21600
    with pytest.raises(LatentdaError, match="conditioned on the calendar"):
        pipeline.sample(5, 1)
    with torch.no_grad():  # two training steps leave the zero-initialised output layers near zero
        generator = torch.Generator().manual_seed(0)
        for parameter in pipeline.backbone.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    start = np.datetime64("2021-03-01T00:00")
    samples = pipeline.sample(5, 2, start_time=start)
    assert samples["time"].values[1] == start + np.timedelta64(6, "h")
    assert np.isfinite(samples["temperature"].values).all()
    # the calendar matters: the same noise at another season gives another sample
    other = pipeline.sample(5, 2, start_time=np.datetime64("2021-09-01T06:00"))
    assert not np.allclose(other["temperature"].values, samples["temperature"].values)

    truth = write_dataset(dataset, tmp_path / "truth.nc")
    operator = tmp_path / "op.yaml"
    operator.write_text("observations:\n  - {name: t, variables: [temperature@500], fraction: 0.3, noise_std: 1.0}\n")
    observations = tmp_path / "obs.nc"
    assert cli.main(["observe", "--truth", str(truth), "--operator", str(operator), "--out", str(observations),
                     "--length", "6", "--quiet"]) == 0
    post = pipeline.reanalyze(open_dataset(observations), members=1, steps=2, sampler="ddpm")
    assert post.sizes["time"] == 6 and np.isfinite(post["temperature"].values).all()
    out = tmp_path / "fc.zarr"
    assert cli.main(["forecast", "--pipeline", str(root / "run" / "pipeline"), "--observations", str(observations),
                     "--lead", "3", "--members", "1", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    forecast = open_dataset(out)
    assert forecast["prediction_timedelta"].values[1] == np.timedelta64(6, "h")


def test_dapper_methods_refuse_a_calendar_prior_when_made(calendar_pipeline):
    """DAPPER's times are numbers, not dates: LatentDA and the learned model refuse such a prior at once."""
    pytest.importorskip("dapper", reason="DAPPER is an optional extra: pip install 'latentda[dapper]'")
    import dapper.mods as modelling

    from latentda.integrations.dapper import LatentDA
    from latentda.integrations.learned_model import with_learned_model

    _, _, pipeline = calendar_pipeline
    for mode in ("filter", "smoother"):
        with pytest.raises(LatentdaError, match="calendar-conditioned prior the dates of DAPPER's times"):
            LatentDA(pipeline=pipeline, N=2, mode=mode)
    size = int(np.prod([pipeline.layout.num_channels, *pipeline.layout.shape]))
    hmm = modelling.HiddenMarkovModel({"M": size, "model": lambda x, t, dt: x, "noise": 0},
                                      {"M": size, "model": lambda x: x, "noise": 1.0},
                                      modelling.Chronology(dt=1, dko=1, Ko=2), modelling.GaussRV(C=1.0, M=size))
    with pytest.raises(LatentdaError, match="calendar-conditioned prior the dates of DAPPER's times"):
        with_learned_model(hmm, pipeline)
