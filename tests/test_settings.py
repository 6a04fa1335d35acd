"""The sampler settings (latentda.diffusion.settings): one set of rules, and every place that states the
settings (YAML diffusion section, pipeline_config.json, PosteriorSettings, the command line, the
docs) built from the one dataclass."""

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from latentda import cli
from latentda.config import load_config, parse, parse_known
from latentda.diffusion.sampling import SAMPLERS, sample
from latentda.diffusion.settings import SAMPLER_FIELDS, SamplerSettings
from latentda.errors import LatentdaError
from latentda.pipeline import SavedSettings
from latentda.posterior.reanalysis import PosteriorSettings
from latentda.training.diffusion import DiffusionConfig, LatentDiffusionConfig

ROOT = Path(__file__).parents[1]
BAD = [("sampler", "euler"), ("sampler", None), ("steps", 0), ("steps", 2.5), ("steps", True), ("corrections", -1),
       ("tau", 0.0), ("tau", -1.0), ("tau", "big"), ("sigma_start", 0.0), ("sigma_start", -3.0), ("churn", -0.1),
       ("overlap", -1), ("overlap", 1.5)]


def test_library_defaults():
    assert SamplerSettings() == SamplerSettings(sampler="pc", steps=64, corrections=1, tau=0.1, sigma_start=None,
                                                churn=0.0, overlap=None)
    assert SAMPLER_FIELDS == ("sampler", "steps", "corrections", "tau", "sigma_start", "churn", "overlap")
    SamplerSettings().validate()


@pytest.mark.parametrize("name,value", BAD)
def test_validate_rejects_each_bad_value_naming_the_field(name, value):
    settings = dataclasses.replace(SamplerSettings(), **{name: value})
    with pytest.raises(LatentdaError, match=rf"^config: {name}: must "):
        settings.validate()
    with pytest.raises(LatentdaError, match=rf"^config: diffusion\.{name}: must "):
        settings.validate("diffusion")


def test_rules_that_need_the_prior():
    settings = SamplerSettings(sigma_start=20.0, overlap=3)
    settings.check_sigma_range(1e-3, 20.0)
    settings.check_window(4)
    with pytest.raises(LatentdaError, match=r"sigma_start: must be in \(sigma_min, sigma_max\] = \(0.001, 10\]"):
        settings.check_sigma_range(1e-3, 10.0)
    with pytest.raises(LatentdaError, match=r"sigma_start"):
        settings.check_sigma_range(20.0, 100.0)  # σ_min itself is excluded
    with pytest.raises(LatentdaError, match=r"overlap: must be in \[0, window\) = \[0, 3\)"):
        settings.check_window(3)
    SamplerSettings().check_sigma_range(1.0, 2.0)  # None: σ_max, always inside
    assert SamplerSettings().blanket_overlap(8) == 4 and SamplerSettings(overlap=0).blanket_overlap(8) == 0


def test_with_overrides_ignores_none_replaces_and_validates():
    base = SamplerSettings(sampler="ddpm", steps=8, sigma_start=20.0)
    assert base.with_overrides() == base
    assert base.with_overrides(steps=None, sampler=None, sigma_start=None) == base
    changed = base.with_overrides(steps=4, sampler="pc", tau=0.5, overlap=0)
    assert changed == dataclasses.replace(base, steps=4, sampler="pc", tau=0.5, overlap=0) and base.steps == 8  # a copy
    for name, value in (("corrections", 3), ("tau", 0.5)):  # Langevin settings given for a run of a sampler without them
        base.with_overrides(**{name: value})  # a pipeline's defaults may hold them
        with pytest.raises(LatentdaError, match=f"^{name}: applies to the pc and heun-pc samplers only .the sampler is ddpm."):
            base.with_overrides(**{name: value}).check_applies({name: value, "steps": None})
        changed.with_overrides(sampler="heun-pc").check_applies({name: value})
        base.check_applies({name: None})
    with pytest.raises(LatentdaError, match="config: steps: must be an integer ≥ 1, got 0"):
        base.with_overrides(steps=0)
    with pytest.raises(LatentdaError, match="config: sampler: must be one of"):
        base.with_overrides(sampler="euler")
    with pytest.raises(LatentdaError, match="unknown sampler setting 'step'"):
        base.with_overrides(step=4)


def test_sample_kwargs_are_the_keywords_of_the_one_sampling_entry_point():
    kwargs = SamplerSettings(sampler="heun", steps=3, sigma_start=5.0, churn=1.0).sample_kwargs()
    parameters = inspect.signature(sample).parameters
    assert set(kwargs) <= set(parameters)
    assert kwargs == {"steps": 3, "method": "heun", "corrections": 1, "tau": 0.1, "sigma_start": 5.0, "churn": 1.0}
    # every sampler field is a sample() keyword, except the blanket overlap (the trajectory denoiser's)
    assert len(kwargs) == len(SAMPLER_FIELDS) - 1


def test_shipped_pipeline_config_round_trips():
    path = ROOT / "pretrained" / "kolmogorov" / "pipeline_config.json"
    data = json.loads(path.read_text())
    saved = parse_known(SavedSettings, data, path)
    assert saved.to_json() == data and list(saved.to_json()) == list(data)  # same keys, same order
    assert saved.sampling == SamplerSettings.of(saved) and saved.sampling.sigma_start == 20.0
    with pytest.raises(LatentdaError, match=r"pipeline_config.json: steps: must be an integer ≥ 1"):
        parse_known(SavedSettings, {**data, "steps": 0}, path)
    with pytest.raises(LatentdaError, match=r"pipeline_config.json: time_step: must be positive"):
        parse_known(SavedSettings, {**data, "time_step": 0.0}, path)


def test_pipeline_saves_and_loads_the_typed_settings(tmp_path):
    from conftest import make_tiny_pipeline
    from latentda.pipeline import LatentDAPipeline

    pipeline, _ = make_tiny_pipeline(tmp_path / "pipeline")
    written = json.loads((tmp_path / "pipeline" / "pipeline_config.json").read_text())
    assert list(written) == ["time_step", "time_units", *SAMPLER_FIELDS]
    assert written == {**dataclasses.asdict(SavedSettings()), "time_step": 0.2, "steps": 4, "sampler": "ddpm"}
    loaded = LatentDAPipeline.from_pretrained(tmp_path / "pipeline")
    assert loaded.sampling == pipeline.sampling == SamplerSettings(sampler="ddpm", steps=4)
    assert (loaded.time_step, loaded.time_units) == (0.2, "1") and loaded.settings == written
    with pytest.raises(AttributeError):
        loaded.settings = {}  # read-only: the typed attributes are what the pipeline uses
    with pytest.raises(LatentdaError, match="config: unknown key 'step'"):
        LatentDAPipeline(loaded.autoencoder, loaded.layout, loaded.statistics, loaded.backbone,
                         loaded.latent_statistics, loaded.scheduler, {"step": 3})


def test_diffusion_config_is_the_sampler_settings_with_the_noise_range():
    config = load_config(LatentDiffusionConfig, ROOT / "configs" / "ldm" / "kolmogorov.yaml")
    assert isinstance(config.diffusion, SamplerSettings)
    assert SamplerSettings.of(config.diffusion).steps == config.diffusion.steps
    assert [f.name for f in dataclasses.fields(DiffusionConfig)] == [*SAMPLER_FIELDS, "sigma_min", "sigma_max", "noise_distribution",
                                                               "log_sigma_mean", "log_sigma_std"]
    base = {"output": "x"}
    with pytest.raises(LatentdaError, match=r"unknown key 'diffusion.step' \(allowed: sampler, steps, .*log_sigma_std\)"):
        parse(LatentDiffusionConfig, {**base, "diffusion": {"step": 3}})
    with pytest.raises(LatentdaError, match="diffusion.steps: expected an integer, got 'ten'"):
        parse(LatentDiffusionConfig, {**base, "diffusion": {"steps": "ten"}})
    with pytest.raises(LatentdaError, match=r"diffusion.sigma_start: must be in \(sigma_min, sigma_max\] = \(0.001, 10\]"):
        parse(LatentDiffusionConfig, {**base, "diffusion": {"sigma_max": 10.0, "sigma_start": 20.0}})
    with pytest.raises(LatentdaError, match=r"diffusion.overlap: must be in \[0, window\) = \[0, 4\)"):
        parse(LatentDiffusionConfig, {**base, "model": {"window": 4}, "diffusion": {"overlap": 4}})
    with pytest.raises(LatentdaError, match="diffusion.tau: must be positive"):
        parse(LatentDiffusionConfig, {**base, "diffusion": {"tau": 0}})


def test_posterior_settings_override_every_sampler_field_by_the_same_rules():
    fields = {f.name: f for f in dataclasses.fields(PosteriorSettings)}
    for name in SAMPLER_FIELDS:
        assert fields[name].default is None, name  # None: the pipeline's
    for name, value in BAD:
        if value is None:
            continue
        with pytest.raises(LatentdaError, match=rf"^config: {name}: must "):
            PosteriorSettings(**{name: value}).validate()
    PosteriorSettings(steps=2, sigma_start=5000.0).validate()  # no prior: its σ range is not known yet


@pytest.mark.parametrize("command", ["sample", "reanalyze", "forecast"])
def test_the_cli_has_exactly_one_option_per_sampler_setting(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for name in SAMPLER_FIELDS:
        actions = [a for a in sub._actions if a.dest == name]
        assert len(actions) == 1, (command, name)
        assert actions[0].option_strings == ["--" + name.replace("_", "-")] and actions[0].default is None
    assert next(a for a in sub._actions if a.dest == "sampler").choices == SAMPLERS
    required = {"sample": ["--length", "1"], "reanalyze": ["--observations", "y.nc"], "forecast": ["--lead", "1"]}
    args = parser.parse_args([command, "--pipeline", "p", "--out", "o.zarr", *required[command],
                              "--sigma-start", "20", "--overlap", "2", "--tau", "0.5"])
    overrides = cli._sampler_overrides(args)
    assert overrides == {**dict.fromkeys(SAMPLER_FIELDS), "sigma_start": 20.0, "overlap": 2, "tau": 0.5}


def test_the_docs_table_lists_every_sampler_setting():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs[docs.index("## Sampler settings"):]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert rows == list(SAMPLER_FIELDS)
    defaults = dataclasses.asdict(SamplerSettings())
    for name in SAMPLER_FIELDS:
        shown = "null" if defaults[name] is None else str(defaults[name])
        assert re.search(rf"^\| `{name}` \|[^|]*\| `{re.escape(shown)}` \|", section, flags=re.MULTILINE), name


def test_every_sampling_path_uses_the_resolved_settings(tmp_path, monkeypatch):
    """pipeline.sample and the posterior samplers hand sample() the pipeline's settings with the
    overrides in place, and the blankets the resolved overlap."""
    import torch

    import latentda.pipeline
    from conftest import make_tiny_pipeline
    from latentda.posterior import reanalysis

    pipeline, _ = make_tiny_pipeline(tmp_path / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    calls = []

    def fake_sample(denoise, shape, schedule, **kwargs):
        calls.append(kwargs)
        return torch.zeros(shape)

    overlaps = []
    real_denoiser = pipeline.trajectory_denoiser
    monkeypatch.setattr(pipeline, "trajectory_denoiser", lambda overlap=None, **kw: (overlaps.append(overlap),
                                                                                    real_denoiser(overlap, **kw))[1])
    monkeypatch.setattr(latentda.pipeline, "run_sampler", fake_sample)
    pipeline.sample_latents(6, 1, steps=3, sampler="pc", tau=0.5, overlap=1)
    expected = SamplerSettings(sampler="pc", steps=3, tau=0.5, overlap=1).sample_kwargs()
    assert {k: calls[-1][k] for k in expected} == expected and overlaps[-1] == 1
    with pytest.raises(LatentdaError, match="unknown sampler setting 'taus'"):
        pipeline.sample_latents(6, 1, taus=0.5)
    with pytest.raises(LatentdaError, match="sigma_start: must be in"):
        pipeline.sample_latents(6, 1, sigma_start=5000.0)

    monkeypatch.setattr(reanalysis, "sample", fake_sample)
    settings = PosteriorSettings(sampler="heun", churn=1.0, overlap=0)
    reanalysis.guided_denoiser(pipeline, _sparse_operator(pipeline), settings)
    reanalysis.sample_members(pipeline, None, 6, [torch.Generator()], settings)
    expected = SamplerSettings(sampler="heun", steps=4, churn=1.0, overlap=0).sample_kwargs()
    assert {k: calls[-1][k] for k in expected} == expected and overlaps[-1] == 0


def _sparse_operator(pipeline):
    import numpy as np

    from latentda.observe.operators import ObservationGroup, ObservationOperator

    values = np.full((6, *pipeline.layout.shape), np.nan)
    values[:, 0, 0] = 0.0
    return ObservationOperator([ObservationGroup("o", [0], "identity", "grid", values, 0.1)])


def test_forecast_options_are_the_forecast_settings_and_checked_once():
    from latentda.posterior.forecast import CONDITIONINGS, MODES, ForecastSettings

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["forecast"]
    for spec in dataclasses.fields(ForecastSettings):
        actions = [a for a in sub._actions if a.dest == spec.name]
        assert len(actions) == 1 and actions[0].default == spec.default, spec.name
    assert next(a for a in sub._actions if a.dest == "mode").choices == MODES
    assert next(a for a in sub._actions if a.dest == "conditioning").choices == CONDITIONINGS
    ForecastSettings().validate()
    for bad, named in ((dict(mode="sideways"), "mode"), (dict(conditioning="nudge"), "conditioning"),
                       (dict(condition_noise=0.0), "conditioning noise")):
        with pytest.raises(LatentdaError, match=named):
            ForecastSettings(**bad).validate()


def test_prior_inflation_reaches_every_posterior_denoiser_and_is_checked(tmp_path):
    """``--prior-inflation`` is PosteriorSettings.prior_inflation; reanalyses, filters and forecasts
    take their prior's denoiser from PosteriorSettings.prior_denoiser, inflated by it
    (latentda.posterior.prior.InflatedDenoiser); bad values name the field."""
    import torch

    from conftest import make_tiny_pipeline
    from latentda.posterior import filtering, forecast, reanalysis
    from latentda.posterior.prior import InflatedDenoiser

    for command in (["reanalyze"], ["forecast", "--lead", "2"], ["filter"]):
        args = cli.build_parser().parse_args([*command, "--pipeline", "p", "--observations", "o", "--out", "x",
                                              "--prior-inflation", "1.5"])
        assert cli._posterior_settings(args).prior_inflation == 1.5
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["filter", "--pipeline", "p", "--observations", "o", "--prior-inflation", "0"])
    pipeline, _ = make_tiny_pipeline(tmp_path / "pipeline")
    x = torch.randn(2, pipeline.window, *pipeline.latent_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    for window_only in (False, True):
        plain = PosteriorSettings().prior_denoiser(pipeline, window_only=window_only)
        inflated = PosteriorSettings(prior_inflation=1.5).prior_denoiser(pipeline, window_only=window_only)
        assert not isinstance(plain, InflatedDenoiser) and isinstance(inflated, InflatedDenoiser)
        with torch.no_grad():
            assert torch.allclose(inflated(x, sigma), plain(x, sigma / 1.5), atol=1e-6)
    for code in (filtering, forecast, reanalysis.guided_denoiser):  # no path builds the prior's denoiser by itself
        assert "trajectory_denoiser(" not in inspect.getsource(code)
    for bad in (0, -1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(LatentdaError, match="prior_inflation"):
            PosteriorSettings(prior_inflation=bad).validate()


def test_errors_name_the_commands_options_for_settings_only():
    """A library message naming a setting by its keyword names the command's option; `config:` (a YAML key's
    prefix) and the names of path options stay as they are (the path may have come from another option)."""
    parser = cli.build_parser()

    def named(message: str, command: str) -> str:
        return cli._named_as_option(message, parser, command)

    assert named("start_time: this pipeline's time axis is model time", "sample") == "--start-time: this pipeline's time axis is model time"
    assert named("conditioning, condition_noise: x", "forecast") == "--conditioning, --condition-noise: x"
    assert named("tau: applies to", "reanalyze") == "--tau: applies to"
    for message, command in (("config: training.steps: y", "train-ae"), ("truth: not readable", "evaluate"),
                             ("out: no such file", "evaluate"), ("tau, steps were: z", "reanalyze")):
        assert named(message, command) == message
