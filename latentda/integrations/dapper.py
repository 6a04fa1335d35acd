r"""A DAPPER data-assimilation method that runs a latentda pipeline: :class:`LatentDA`.

DAPPER (``pip install latentda[dapper]``, version 1.7.1) benchmarks DA methods on twin experiments:
an ``HMM`` (dynamics, observation operator ``HMM.Obs(ko)`` with noise, chronology ``HMM.tseq``)
simulates a truth ``xx`` (K + 1, Nx) and observations ``yy`` (Ko + 1, each (Ny,)), and each method
in an ``xpList`` assimilates them and records its statistics through ``self.stats.assess``, so that
``xps.tabulate_avrgs()`` / ``print_averages`` compare it with EnKF, LETKF, … ::

    xps = dpr.xpList()
    xps += LETKF(N=20, infl=1.04, loc_rad=4)
    xps += LatentDA(pipeline=pipeline, N=8)                     # filter: y_1..y_k only at cycle k
    xps += LatentDA(pipeline=pipeline, N=8, mode="smoother")    # reanalysis of the whole window
    xps.launch(HMM, save_as=False)

**What it uses of the HMM.** Not ``HMM.X0``, nor ``HMM.Dyn`` unless ``dynamics="model"`` (below): the learned prior is the dynamics and
the initial law, so the pipeline must have been trained on the model's states taken every ``dto``
(``HMM.tseq.dko`` model steps = one pipeline time step): ``pipeline.time_step`` must equal
``HMM.tseq.dto`` (checked for priors on a model-time axis; ``check_time_step=False`` when the
pipeline's time axis has other units than the HMM's). States exist at k = 0 and at the
observation times kko; between them (dko > 1) nothing is assessed (the ``u`` series of
``store_u=True`` keep NaN there, so DAPPER's averaged ``rmse.u`` is NaN when dko > 1: compare ``a``).

**State vectors ↔ fields.** A state x (Nx,) is the pipeline's fields (C, H, W) flattened in C order
(channels in ``pipeline.layout.channels`` order) by default. ``state_index`` (Nx,) changes that: entry
i of the state is the field entry ``state_index[i]`` of the C-order flattening (e.g.
``np.ravel_multi_index`` of a Fortran layout, or a channel permutation); Nx must equal C·H·W.

**Observations.** Supported: operators *linear* in the state (any time dependence: ``HMM.Obs(ko)`` is
read per cycle, positions may change) with a *diagonal* noise covariance ``HMM.Obs(ko).noise.C``
(zero mean; the noise is treated as Gaussian with that covariance, as DAPPER's EnKF treats it). The operator's matrix is taken from ``Obs(ko).linear(x)`` when it has one, else by
probing the operator on basis vectors (in chunks), and checked against the operator at random
states (a nonlinear operator is refused with a one-line error). Each row must read one channel:

- rows that pick single grid points (identity subsets, e.g. ``partial_Id_Obs``): ``grid`` groups, one
  per channel and noise level (NaN where not observed);
- any other rows: ``linear`` groups, a sampling matrix per channel and noise level.

Rows mixing channels, correlated noise and nonlinear operators are not supported. The pipeline's
representation error is added to the noise as in ``latentda reanalyze`` (``settings``).

**Modes.** ``filter`` (:func:`latentda.posterior.filtering.filter_members`): at cycle ko the
observations yy[0..ko] only are read (yy[ko] when the cycle is computed: never a later one; the
test spies on it); statistics: ``assess(0, E)`` for the start (a prior sample), then per ko
``assess(k, ko, 'f', E)`` for the forecast (``forecasts=True``) and ``assess(k, ko, E)`` (``a`` and
``u``) for the analysis. ``start_cycle`` = s > 0 starts the filter late: its first state is a prior
sample (not assessed) and it assimilates yy[s], yy[s + 1], … only; the statistics of the cycles before s
stay NaN. DAPPER averages after its burn-in, so s may not pass the first averaged cycle (checked), and s
a few spin-up cycles before it measures the filter's equilibrium error without paying for the cycles before.
``smoother``: one reanalysis of the whole window (k = 0 and every observation time, at least the
prior's window K of states) conditioned on all of yy, recorded as ``s`` (smoothed) at every ko and
``u``; DAPPER keeps ``s`` series for methods with a ``Lag`` attribute, which this mode sets
(``Lag = "window"``). A per-cycle ``residual_ratio`` (ensemble mean
of the RMS of (y − H x)/σ_y, bias included) is recorded too (``xp.avrgs.residual_ratio``).

**The twin experiment's model as the forecast** (``dynamics="model"``, filter only). By default the learned
prior is the dynamics. With ``dynamics="model"`` each member m is carried from cycle to cycle by the HMM's own
model, as the LETKF's members are: its analysis x_a^m is stepped over the dko model steps of a cycle,
x_f^m = M(x_a^m) (``HMM.Dyn``), and the cycle samples, in the same one guided window as the plain filter,

    z_{1:K} ~ p(z_{1:K} | z_{K−n:K−1} ≈ h^m, y_k, x_f^m),    x_f^m = D(z_K) + ε_b,  ε_b ~ N(0, σ_b² I),

the forecast entering as a full-field observation of the new state (``grid`` groups, one per channel) with the
background noise σ_b (``background_noise``: a number in physical units, or ``"spread"``: each cycle the members'
forecast spread, σ_b = λ (mean over the grid of the forecasts' variance, ddof 1)^½ with λ =
``background_inflation``, so a filter started far from the truth trusts its forecasts as little as their spread
says; the representation error is added to σ_b as to y_k's noise): a variational analysis whose prior is the learned window prior given the member's latent history, with
the forecast as its background term. The analysis is x_a^m = D(z_K). With ``increment=True`` it is the forecast
plus the observations' increment, x_a^m = x_f^m + D(z_K) − D(z_K^b), where z^b is the same draw — the member's
history, random numbers and background — without y_k: the model then steps full fields (the scales the decoder
misses stay the model's), and the analysis differs from the forecast by what y_k changes, not by the distance of a
fresh sample, or of the decoder's fit, to it (a fit that even through the truth is ≈ the autoencoder's floor off,
and would be injected every cycle). It costs a second guided window per member and cycle. ``innovation`` sets
what y_k is compared with. Read as pathwise conditioning (Matheron's rule, exact for a Gaussian prior: a posterior
draw is its paired prior draw moved by K (y − H x_prior − ε)), the increment is D(z_a) − D(z_b) = K (y_k − H D(z_b)
− ε): y_k's innovation against the member's own prior draw, which the background holds to x_f's block means only,
so x_a = x_f + K (y_k − H x_f − ε) + K H (x_f − D(z_b)) carries a term of the draw's sub-block spread. ``innovation="draw"`` (the default) keeps it; ``"forecast"`` draws z_b
first and z_a given y_k − H x_f + H D(z_b) (the observations shifted by H (D(z_b) − x_f)), so that the increment is
K (y_k − H x_f − ε), the stochastic EnKF's update of x_f with the prior's gain K. The ``f`` statistics are the model forecasts x_f^m
(``forecasts``); the members run one at a time (each cycle's background differs per member). With a lag ℓ the
window re-samples the member's last ℓ states given their cycles' observations *and backgrounds* (the forecasts
of those cycles), and the model steps the newest only (no ``s`` series: the re-sampled past is not carried on).
The residual ratio reads y_k only. ``background_factor`` = k > 1 observes the forecast's k × k block means
instead of its pixels (σ_b from their spread): a forecast's errors are correlated in space, and observed pixel
by pixel with independent noise the forecast pins its large scales, which y_k then cannot correct. ``spin_up``
= s assimilates the first s cycles without the background (the learned prior's filter, its analyses stepped by
the model all the same): started from a prior sample, far from the truth, the forecasts are worth little, and the
prior's filter converges in a few cycles where the model's background, however loose, holds the analyses near
them. ``history="analyses"``: after the spin-up the window's latent history is the member's analyses encoded,
h^m = (E(x_a^m) of its last n cycles, n = ``context`` or K − 1), the states the model stepped, in place of the
member's own draws z (which, with the increment, part ways from the x_a^m the model carries); each cycle then
samples the new state alone (lag 1: a re-sampled past would replace the encoded analyses), one encoder forward
per member and cycle more. Costs beyond the plain filter's: the model's steps per member and cycle (and a second
window with ``increment``); the decoder already runs on the full new state. With ``background_noise="spread"`` the members'
spread sets σ_b. On DAPPER's QG case 4 members (``background_factor`` 8) beat the prior's filter for ten cycles,
then drifted, under-dispersed, with λ = 1 and λ = 1.6 alike (docs/qg-benchmark.md, "The model's filter with σ_b
inflated"): the background's weight is not what limits y_k's pull there. With ``history="analyses"`` they do not
drift (cycles 51–100: 1.204, 10.4 % below the prior's filter; "… the encoded analyses as its history").

**The hybrid: an ensemble update first** (``ensemble_update=True``, with ``dynamics="model"``). Each member alone
is a filter whose gain is the learned prior's: the members share nothing but σ_b, and their forecast anomalies — the
flow's own error structure — never enter an analysis. With ``ensemble_update`` each guided cycle first updates all
members' forecasts together with DAPPER's ETKF (its square-root ``EnKF_analysis``; with ``loc_rad`` in local domains,
``local_analyses`` with ``HMM.Obs(ko).localizer`` and a Gaspari–Cohn taper, as DAPPER's ``LETKF``; then its
inflation ``infl`` of the anomalies), and the latentda step above runs on those analyses x_e^m in place of x_f^m:
the background is x_e^m (σ_b, with ``"spread"``, their spread), the increment is added to x_e^m. For a linear-Gaussian
step this is a hybrid gain, as in the hybrid LETKF of Penny (2014, an ensemble analysis, then a static-covariance
analysis with it as the background): x_e = x_f + K_e (y_k − H x_f), x_a = x_e + K_p (y_k − H x_e), with K_e the
ensemble's (localized) gain and K_p the prior's — y_k is read twice, by design: the second gain corrects what the
first, from few members, missed. The recorded ``f`` statistics stay the model forecasts x_f.
Cost: one ETKF per cycle (on every process, on all members: deterministic, the same everywhere), small beside the
guided windows. The localizer must exist where ``loc_rad`` is given (one-line error otherwise; ``loc_rad=None`` is a
global ETKF, for small states).

**The lagged filter is a fixed-lag smoother.** With lag ℓ > 1 each cycle samples the new state and the
ℓ − 1 before it again given their observations (:func:`latentda.posterior.filtering.filter_members`);
a state's last sample, taken at cycle ko + ℓ − 1, is its estimate given the observations up to that
cycle (``FilterCycle.sampled``), recorded as ``s`` at ko (the last cycles' states: their samples at
the last cycle), so ``rmse.s`` of a filter run is its fixed-lag smoother's, at no extra cost beyond one
decoder forward per member and cycle (``Lag = ℓ − 1``: the cycles of observations after ko it reads, as for
DAPPER's EnKS).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

try:
    import dapper.stats
    from dapper.da_methods import da_method
    from dapper.tools.progressbar import progbar
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("latentda.integrations.dapper needs DAPPER: pip install 'latentda[dapper]' (dapper==1.7.1)") from error

from latentda.processes import collective_device, deal_members, gather_members, process_count, process_state
from latentda.config import MAX_SEED
from latentda.errors import LatentdaError, check_integer
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.posterior.filtering import FilterSettings, check_cycle_settings, default_lag, filter_members, join_cycles
from latentda.posterior.reanalysis import PosteriorSettings, posterior_members

__all__ = ["LatentDA", "FILTER_ARGUMENTS", "forecast_skill", "true_past_forecast", "advance", "evenly_spaced", "observation_operator", "observation_matrix"]

PROBE_CHUNK = 1024


def observation_matrix(operator, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The (Ny, Nx) matrix of a DAPPER observation ``Operator`` linear in the state (its ``linear``
    at 0 when it has one, else probed on the basis vectors), checked against the operator at two
    random states; :class:`LatentdaError` when it is not linear."""
    rng = rng or np.random.default_rng(0)
    matrix = None
    if getattr(operator, "linear", None) is not None:
        try:
            matrix = np.asarray(operator.linear(np.zeros(size)), dtype=np.float64)
        except Exception:  # a Jacobian that wants more (t, dt, …): probe instead
            matrix = None
    if matrix is None or matrix.ndim != 2 or matrix.shape[1] != size:
        columns = []
        for start in range(0, size, PROBE_CHUNK):
            count = min(PROBE_CHUNK, size - start)
            basis = np.zeros((count, size))
            basis[np.arange(count), start + np.arange(count)] = 1.0  # unit vectors e_start … e_{start+count−1}
            columns.append(np.asarray(operator(basis), dtype=np.float64).reshape(len(basis), -1))
        matrix = np.concatenate(columns).T
    probes = rng.standard_normal((2, size))
    values = np.asarray(operator(probes), dtype=np.float64).reshape(2, -1)
    if values.shape != (2, matrix.shape[0]) or not np.allclose(values, probes @ matrix.T, rtol=1e-6, atol=1e-8 * np.abs(values).max()):
        raise LatentdaError("the observation operator is not linear in the state: LatentDA supports linear operators "
                            "(identity subsets, averages, any matrix) only")
    return matrix


def check_cycle_step(pipeline, dto: float) -> None:
    """The prior's time step (``pipeline.time_step``, model time) is DAPPER's time between observations
    ``dto``: a prior trained on states 5 apart run on cycles 10 apart would assimilate each cycle with the
    wrong dynamics and no error. Priors on a datetime axis, or without a time step, are not checked;
    callers skip it with ``check_time_step=False`` (a time axis in other units than the HMM's)."""
    step = getattr(pipeline, "time_step", None)
    if step is None or getattr(pipeline, "time_units", "1") == "seconds":
        return
    if not np.isclose(float(step), float(dto), rtol=1e-6, atol=0):
        raise LatentdaError(f"the pipeline's time step is {step:g}, the HMM's time between observations (tseq.dto) "
                            f"{dto:g}: the prior must be trained on the model's states one dto apart "
                            "(check_time_step=False if its time axis has other units)")


def _noise_std(operator, count: int) -> np.ndarray:
    covariance = getattr(getattr(operator, "noise", None), "C", None)
    if covariance is None or np.isscalar(covariance):
        raise LatentdaError("the observation noise needs a positive covariance (Obs.noise.C); it is treated as Gaussian")
    full = np.asarray(covariance.full, dtype=np.float64)
    if full.shape != (count, count) or not np.allclose(full, np.diag(np.diag(full))):
        raise LatentdaError("LatentDA supports diagonal observation noise covariances only")
    variance = np.diag(full)
    if not (variance > 0).all():
        raise LatentdaError("the observation noise variances must be positive")
    if np.any(np.asarray(getattr(operator.noise, "mu", 0), dtype=np.float64) != 0):
        raise LatentdaError("LatentDA supports zero-mean observation noise only (Obs.noise.mu)")
    return np.sqrt(variance)


def observation_operator(matrix: np.ndarray, y: np.ndarray, noise_std: np.ndarray, field_shape: tuple[int, int, int],
                         state_index: np.ndarray | None = None) -> ObservationOperator:
    """One time step of observations y = H x + ε as a latentda operator on fields (C, H, W): ``grid``
    groups for rows picking single grid points, ``linear`` groups otherwise, one group per channel
    and noise level (module docstring)."""
    C, H, W = field_shape
    n = C * H * W
    matrix = np.asarray(matrix, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if matrix.shape != (y.size, matrix.shape[1]) or matrix.shape[1] != n:
        raise LatentdaError(f"the observation matrix is {matrix.shape}, expected ({y.size}, {n}) for fields {field_shape}")
    if not np.isfinite(y).all():
        raise LatentdaError("the observations contain NaN or inf")
    if state_index is not None:  # columns in the state's order → the fields' C-order flattening
        fields_matrix = np.zeros_like(matrix)
        fields_matrix[:, np.asarray(state_index)] = matrix
        matrix = fields_matrix
    per_channel = matrix.reshape(len(y), C, H * W)
    touched = np.abs(per_channel).sum(axis=2) > 0  # (Ny, C)
    if (touched.sum(axis=1) != 1).any():
        raise LatentdaError("each observation must read exactly one channel of the fields (rows mixing channels, "
                            "or reading nothing, are not supported)")
    channel = touched.argmax(axis=1)
    groups = []
    for c in np.unique(channel):
        for std in np.unique(noise_std[channel == c]):
            rows = np.nonzero((channel == c) & (noise_std == std))[0]
            block = per_channel[rows, c]
            picks = (np.count_nonzero(block, axis=1) == 1) & np.isclose(block.max(axis=1), 1.0)
            pixels = block.argmax(axis=1)
            name = f"c{c}_s{len(groups)}"
            if picks.all() and len(np.unique(pixels)) == len(rows):
                values = np.full(H * W, np.nan)
                values[pixels] = y[rows]
                groups.append(ObservationGroup(name, [int(c)], "identity", "grid", values.reshape(1, H, W), float(std)))
            else:
                groups.append(ObservationGroup(name, [int(c)], "identity", "linear", y[rows][None], float(std),
                                               matrix=block))
    return ObservationOperator(groups)


def _fields_to_states(fields: np.ndarray, state_index: Any = None) -> np.ndarray:
    """Fields (N, C, H, W) → DAPPER states (N, Nx): the C-order flattening, entry i = field entry
    ``state_index[i]`` when given (module docstring)."""
    flat = np.asarray(fields, dtype=np.float64).reshape(len(fields), -1)
    return flat if state_index is None else flat[:, np.asarray(state_index)]


def _states_to_fields(states: np.ndarray, shape: tuple[int, int, int], state_index: Any = None) -> np.ndarray:
    """DAPPER states (N, Nx) → fields (N, C, H, W): the inverse of :func:`_fields_to_states`."""
    flat = np.asarray(states, dtype=np.float64).reshape(len(states), -1)
    if state_index is not None:
        flat = flat[:, np.argsort(np.asarray(state_index))]  # field entry state_index[i] holds state entry i
    return flat.reshape(len(states), *shape)


def _processes() -> tuple[int, int]:
    """(this process's index, the number of processes): joins the process group under torchrun /
    accelerate launch (:func:`latentda.processes.process_state`); (0, 1) alone."""
    state = process_state()
    return state.process_index, state.num_processes


def _check_same(values: np.ndarray, what: str) -> None:
    """One-line error unless every process holds the same ``values`` (compared by checksums)."""
    import torch.distributed as dist

    if process_count() == 1:
        return
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    weights = np.cos(np.arange(flat.size) * 0.7)  # two checksums: a plain and a position-weighted sum
    mine = torch.tensor([flat.sum(), flat @ weights, float(flat.size)], dtype=torch.float64, device=collective_device())
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.allclose(low, high, rtol=1e-12, atol=0.0):
        raise LatentdaError(f"the processes disagree on {what}: run the same twin experiment (HMM.simulate() under "
                            "the same seed) in every process")


def _posterior_settings(settings: Any) -> PosteriorSettings:
    """``settings`` as :class:`PosteriorSettings`: one already, a dict of its fields, or None (the defaults)."""
    return settings if isinstance(settings, PosteriorSettings) else PosteriorSettings(**dict(settings or {}))


FILTER_ARGUMENTS = ("start_cycle", "lag", "context", "conditioning", "condition_noise", "forecasts", "dynamics",
                    "background_noise", "background_inflation", "increment", "spin_up",
                    "background_factor", "history", "innovation", "ensemble_update", "loc_rad", "infl")  # refused by the smoother
DYNAMICS = ("prior", "model")
HISTORIES = ("draws", "analyses")
INNOVATIONS = ("draw", "forecast")


@da_method()
class LatentDA:
    """latentda as a DAPPER method (module docstring). ``settings``: a
    :class:`latentda.posterior.reanalysis.PosteriorSettings` or a dict of its fields (None: the
    pipeline's defaults); ``conditioning``, ``condition_noise``, ``context``, ``lag``: the filter's
    (:func:`latentda.posterior.filtering.filter_members`); ``start_cycle``: the first cycle ko the filter
    assimilates (module docstring)."""

    pipeline: Any
    N: int = 8
    mode: str = "filter"
    latent_seed: int = 0  # the members' random streams (DAPPER's own `seed` attribute seeds the twin experiment)
    settings: Any = None
    conditioning: str = "mmps"
    condition_noise: float = 0.05
    context: Any = None
    lag: Any = None  # None: ⌊K/2⌋ (latentda.posterior.filtering.default_lag)
    forecasts: bool = True
    state_index: Any = None
    start_cycle: int = 0
    check_time_step: bool = True  # the pipeline's time step must be HMM.tseq.dto (False: its time axis has other units)
    dynamics: str = "prior"  # prior: the learned prior forecasts; model: HMM.Dyn steps each member (module docstring)
    background_noise: Any = "spread"  # dynamics="model": σ_b of the forecast as an observation (physical units) or "spread"
    background_inflation: float = 1.0  # dynamics="model", background_noise="spread": λ, σ_b = λ × the forecasts' spread
    increment: bool = False  # dynamics="model": x_a = x_f + D(z_a) − D(z_b), z_b drawn alike without y_k
    spin_up: int = 0  # dynamics="model": the first cycles assimilated without the model's background (module docstring)
    background_factor: int = 1  # dynamics="model": the background observes k × k block means of the forecast
    history: str = "draws"  # dynamics="model": the window's latent history, the member's draws or its encoded analyses E(x_a)
    innovation: str = "draw"  # increment: y_k's innovation against the member's prior draw D(z_b), or its forecast x_f
    ensemble_update: bool = False  # dynamics="model": the forecasts first updated by DAPPER's (L)ETKF, the hybrid (module docstring)
    loc_rad: Any = None  # ensemble_update: the LETKF's localization radius, as DAPPER's LETKF (None: a global ETKF)
    infl: float = 1.0  # ensemble_update: multiplicative inflation of the ETKF's analysis anomalies, as DAPPER's

    def __post_init__(self) -> None:
        """Every argument is checked here, when the method is made: a bad one fails before an xpList runs the
        methods listed before it (and again when it assimilates: an xp's fields may be edited in between)."""
        if self.mode not in ("filter", "smoother"):
            raise LatentdaError(f"mode must be filter or smoother, got {self.mode!r}")
        if getattr(self.pipeline, "calendar", False):
            raise LatentdaError("LatentDA cannot give a calendar-conditioned prior the dates of DAPPER's times")
        check_integer("N", self.N, 2, hint=" (an ensemble: its spread needs two members, as DAPPER's EnKF does)")
        check_integer("latent_seed", self.latent_seed, 0, MAX_SEED)
        check_integer("start_cycle", self.start_cycle, 0)
        check_integer("spin_up", self.spin_up, 0)
        check_integer("background_factor", self.background_factor, 1)
        if self.dynamics not in DYNAMICS:
            raise LatentdaError(f"dynamics must be one of {', '.join(DYNAMICS)}, got {self.dynamics!r}")
        if self.history not in HISTORIES:
            raise LatentdaError(f"history must be one of {', '.join(HISTORIES)}, got {self.history!r}")
        if self.innovation not in INNOVATIONS:
            raise LatentdaError(f"innovation must be one of {', '.join(INNOVATIONS)}, got {self.innovation!r}")
        for name in ("background_noise", "background_inflation", "loc_rad", "infl"):
            value = getattr(self, name)
            if (name == "background_noise" and isinstance(value, str) and value == "spread") or (name == "loc_rad" and value is None):
                continue
            if not (isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value) and value > 0):
                raise LatentdaError(f"{name} must be a positive number{' or spread' if name == 'background_noise' else ''}"
                                    f"{' or None' if name == 'loc_rad' else ''}, got {value!r}")
        for name in ("forecasts", "check_time_step", "increment", "ensemble_update"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise LatentdaError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.state_index, np.ndarray):  # a tuple compares whole (xpList(unique=True), xp in xps)
            if self.state_index.ndim != 1 or not np.issubdtype(self.state_index.dtype, np.integer):
                raise LatentdaError(f"state_index must be a 1-D array of integers, got {self.state_index.dtype} of shape "
                                    f"{self.state_index.shape}")
            self.state_index = tuple(int(i) for i in self.state_index)
        self.__dict__.pop("Lag", None)
        self._posterior_settings().validate(self.pipeline)
        if self.mode == "smoother":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            filter_only = [name for name in FILTER_ARGUMENTS if getattr(self, name) != defaults[name]]
            if filter_only:
                raise LatentdaError(f"{', '.join(filter_only)}: the filter's, not the smoother's (it reads the whole window)")
            self.Lag = "window"  # DAPPER keeps the 's' (smoothed) series of methods with a Lag
            return
        check_cycle_settings(self._posterior_settings(), self.pipeline.window)
        if self.dynamics == "model":
            if self.conditioning == "inpaint":
                raise LatentdaError("dynamics='model' takes conditioning mmps or known (inpaint replaces the states the "
                                    "background observes)")
            if self.history == "analyses":  # its guided cycles sample the new state alone (lag 1)
                FilterSettings(self.conditioning, self.condition_noise, self.context, self.forecasts, 1).validate(self.pipeline.window)
            if self.innovation != "draw" and not self.increment:
                raise LatentdaError("innovation='forecast' shifts the increment's observations: it needs increment=True")
            if not self.ensemble_update and (self.loc_rad is not None or self.infl != 1.0):
                raise LatentdaError("loc_rad and infl: the options of ensemble_update=True")
        elif self.background_noise != "spread" or self.background_inflation != 1.0 or self.increment or self.spin_up \
                or self.background_factor != 1 or self.history != "draws" or self.innovation != "draw" \
                or self.ensemble_update or self.loc_rad is not None or self.infl != 1.0:
            raise LatentdaError("background_noise, background_inflation, background_factor, increment, spin_up, history, "
                                "innovation, ensemble_update, loc_rad and infl: the options of dynamics='model'")
        lag = default_lag(self.pipeline.window) if self.lag is None else self.lag
        FilterSettings(self.conditioning, self.condition_noise, self.context, self.forecasts, lag).validate(self.pipeline.window)
        if self._lag() > 1 and self.dynamics == "prior":  # the lagged filter is also a fixed-lag smoother (module docstring); DAPPER's
            self.Lag = self._lag() - 1  # Lag: the cycles after ko whose observations its estimate reads (as EnKS's)

    # ------------------------------------------------------------------ helpers
    def _lag(self) -> int:
        return default_lag(self.pipeline.window) if self.lag is None else int(self.lag)

    def _posterior_settings(self) -> PosteriorSettings:
        return _posterior_settings(self.settings)

    def _field_shape(self) -> tuple[int, int, int]:
        layout = self.pipeline.layout
        return (layout.num_channels, *layout.shape)

    def _to_state(self, fields: np.ndarray) -> np.ndarray:
        return _fields_to_states(fields, self.state_index)

    def _observation_matrix(self, HMM, ko: int) -> np.ndarray:
        """H of cycle ko (:func:`observation_matrix`), an error naming the cycle."""
        try:
            return observation_matrix(HMM.Obs(ko), HMM.Dyn.M)
        except LatentdaError as error:
            raise LatentdaError(f"the observations of cycle ko = {ko}: {error}") from None

    def _raw_groups(self, HMM, ko: int, y, matrix: np.ndarray | None = None) -> list[ObservationGroup]:
        """The groups of cycle ko's observations y, without the representation error; ``matrix``: the cycle's H
        when the caller already has it (made here otherwise)."""
        matrix = self._observation_matrix(HMM, ko) if matrix is None else matrix
        try:
            operator = observation_operator(matrix, y, _noise_std(HMM.Obs(ko), matrix.shape[0]), self._field_shape(),
                                            self.state_index)
        except LatentdaError as error:
            raise LatentdaError(f"the observations of cycle ko = {ko}: {error}") from None
        return list(operator.groups)

    def _operator(self, HMM, ko: int, y) -> ObservationOperator:
        return self._with_representation_error(ObservationOperator(self._raw_groups(HMM, ko, y)))

    def _background_noise(self, forecasts: np.ndarray) -> float:
        """σ_b of a cycle from all members' forecasts (N, …): ``background_noise``, or with ``"spread"`` λ times
        the root of the mean over what the background observes (pixels, or k × k block means) of their variance
        (ddof 1) (module docstring)."""
        if self.background_noise != "spread":
            return float(self.background_noise)
        spread = float(np.sqrt(np.mean(np.var(self._coarse(forecasts), axis=0, ddof=1))))
        if not spread > 0:
            raise LatentdaError("the members' forecasts are identical: background_noise='spread' needs spread (give a number)")
        return float(self.background_inflation) * spread

    def _coarse(self, fields: np.ndarray) -> np.ndarray:
        """Block means of k × k pixels (k = ``background_factor``) over the last two axes, cropped to multiples of k
        as latentda's ``coarsen`` sampling does; the fields themselves for k = 1."""
        k = int(self.background_factor)
        if k == 1:
            return np.asarray(fields, dtype=np.float64)
        H, W = fields.shape[-2] // k, fields.shape[-1] // k
        cropped = np.asarray(fields, dtype=np.float64)[..., : H * k, : W * k]
        return cropped.reshape(*fields.shape[:-2], H, k, W, k).mean(axis=(-3, -1))

    def _background(self, forecast: np.ndarray, noise: float) -> list[ObservationGroup]:
        """The model's forecast fields (C, H, W) as observations of the new state with noise σ_b (module docstring),
        one group per channel: every pixel (``grid``), or its k × k block means (``coarsen``, k = ``background_factor``)."""
        k = int(self.background_factor)
        return [ObservationGroup(f"background_c{c}", [c], "identity", "grid" if k == 1 else "coarsen",
                                 self._coarse(forecast[c])[None], noise, factor=k) for c in range(len(forecast))]

    def _ensemble_analysis(self, HMM, ko: int, y, forecasts: np.ndarray) -> np.ndarray:
        """DAPPER's ETKF analysis of all members' forecast states (N, Nx) with cycle ko's observations y (module
        docstring, ``ensemble_update``): its square-root update (``EnKF_analysis``, "Sqrt") — in local domains
        (``local_analyses`` with ``HMM.Obs(ko).localizer``, Gaspari–Cohn taper) with ``loc_rad`` as DAPPER's LETKF —
        then its inflation of the anomalies by ``infl`` (``post_process``). Deterministic: every process computes
        the same analyses from the same gathered forecasts."""
        from dapper.da_methods.ensemble import EnKF_analysis, local_analyses, post_process

        Obs, E = HMM.Obs(ko), np.array(forecasts, dtype=np.float64)  # a copy: local_analyses writes into E
        y = np.asarray(y, dtype=np.float64)
        if self.loc_rad is None:
            E = EnKF_analysis(E, Obs(E), Obs.noise, y, "Sqrt")
        else:
            localizer = getattr(Obs, "localizer", None)
            if localizer is None:
                raise LatentdaError(f"loc_rad: the observations of cycle ko = {ko} have no localizer (DAPPER's "
                                    "Obs.localizer): give loc_rad=None for a global ETKF")
            batches, taper = localizer(self.loc_rad, "x2y", "GC")
            E, _ = local_analyses(E, Obs(E), Obs.noise.C, y, batches, taper)
        return post_process(E, float(self.infl), 0)

    def _with_representation_error(self, operator: ObservationOperator) -> ObservationOperator:
        error = getattr(self.pipeline, "physical_representation_error", None)  # None: a prior without an autoencoder
        if error is None or not self._posterior_settings().representation_error:
            return operator
        return operator.with_representation_error(error)

    def _check(self, HMM) -> None:
        C, H, W = self._field_shape()
        if HMM.Dyn.M != C * H * W:
            raise LatentdaError(f"the HMM's state has {HMM.Dyn.M} entries, the pipeline's fields {C}×{H}×{W} = {C * H * W}")
        if self.check_time_step:
            check_cycle_step(self.pipeline, HMM.tseq.dto)
        if self.state_index is not None:
            index = np.asarray(self.state_index)
            if index.shape != (HMM.Dyn.M,) or not np.array_equal(np.sort(index), np.arange(HMM.Dyn.M)):
                raise LatentdaError("state_index must be a permutation of range(Nx)")

    def _new_residual_series(self) -> None:
        self.stats.new_series("residual_ratio", 1, self.stats.Ko + 1)

    # ------------------------------------------------------------------ DAPPER's entry point
    def assimilate(self, HMM, xx, yy):
        made_for = self.__dict__.get("Lag")
        self.__post_init__()  # the fields as they are now: an xp may be edited after it was made
        if self.__dict__.get("Lag") != made_for:  # DAPPER made its stats ('s' series or not) for the Lag it had
            self.stats = dapper.stats.Stats(self, HMM, xx, yy, liveplots=self.stats.liveplots, store_u=self.stats.store_u)
        self._check(HMM)
        rank, processes = _processes()
        members = deal_members(self.N, rank, processes)  # this process's share (module docstring)
        _check_same(xx, "the truth xx")
        self._new_residual_series()
        settings = self._posterior_settings()
        kko = HMM.tseq.kko
        if self.mode == "smoother":
            _check_same(np.concatenate([np.ravel(y) for y in yy]), "the observations yy")
            cycles = [None] + [self._operator(HMM, ko, yy[ko]) for ko in range(len(kko))]
            window = join_cycles(cycles)
            if window.length < self.pipeline.window:
                raise LatentdaError(f"the smoother needs at least {self.pipeline.window} states (k = 0 and the "
                                    f"observation times), the HMM has {window.length}")
            ensemble = np.stack([fields for _, fields, _ in posterior_members(self.pipeline, window, members, settings, self.latent_seed)])
            ensemble = gather_members(ensemble, self.N)
            self.stats.assess(0, E=self._to_state(ensemble[:, 0]))
            for ko, k in enumerate(kko):
                E = self._to_state(ensemble[:, ko + 1])
                self.stats.assess(k, ko, "us", E=E)
                self.stats.residual_ratio[ko] = float(cycles[ko + 1].residual_ratio(
                    torch.from_numpy(ensemble[:, ko + 1 : ko + 2]).double()).mean())
            return

        start = int(self.start_cycle)
        if start >= len(kko):
            raise LatentdaError(f"start_cycle {start} is past the last of the HMM's {len(kko)} observation cycles")
        averaged = np.flatnonzero(np.asarray(HMM.tseq.masko))
        if averaged.size and start > averaged[0]:  # those cycles' statistics would be NaN, and DAPPER's averages
            raise LatentdaError(f"start_cycle {start} is after cycle {averaged[0]}, the first that DAPPER averages "
                                "(after the HMM's burn-in): start at or before it")

        if self.dynamics == "model":
            self._filter_with_model(HMM, yy, members, settings, start, rank)
            return

        def cycles():  # lazy: yy[ko] is read when cycle ko + 1 is computed, after cycle ko was assessed
            yield None  # the start, a prior sample (k = 0, or just before cycle start_cycle)
            for ko in range(start, len(kko)):
                y = yy[ko]
                _check_same(y, f"the observations of cycle {ko}")
                yield self._operator(HMM, ko, y)

        run = filter_members(self.pipeline, cycles(), members, settings, self.latent_seed, conditioning=self.conditioning,
                             condition_noise=self.condition_noise, context=self.context, forecasts=self.forecasts,
                             lag=self.lag)
        # DAPPER's own progress bar (its methods show one; off under pytest or where DAPPER's config disables it)
        if rank == 0:  # one bar for the processes together
            run = progbar(run, desc=f"LatentDA filter, {self.N} members", total=len(kko) - start + 1)
        for cycle in run:
            self._assess_smoothed(HMM, cycle, start)
            E = self._to_state(gather_members(cycle.analysis, self.N))
            if cycle.cycle == 0:
                if start == 0:
                    self.stats.assess(0, E=E)
                continue
            ko = start + cycle.cycle - 1
            k = kko[ko]
            if cycle.forecast is not None:
                self.stats.assess(k, ko, "f", E=self._to_state(gather_members(cycle.forecast, self.N)))
            self.stats.assess(k, ko, E=E)
            self.stats.residual_ratio[ko] = float(np.mean(gather_members(np.asarray(cycle.residual_ratio), self.N)))


    def _filter_with_model(self, HMM, yy, members: list[int], settings: PosteriorSettings, start: int, rank: int) -> None:
        """The filter with the HMM's model as the forecast (module docstring, ``dynamics="model"``): one
        :func:`filter_members` run per member, fed each cycle with y_k and that member's model forecast."""
        tseq, kko, shape = HMM.tseq, HMM.tseq.kko, self._field_shape()
        index = None if self.state_index is None else np.asarray(self.state_index)
        pending: dict[int, ObservationOperator] = {}  # member → the cycle it assimilates next

        def member_cycles(member: int):  # lazy: a cycle's operator exists once the loop below has made it
            yield None  # the start: a prior sample (k = 0, or just before cycle start_cycle)
            while True:
                yield pending.pop(member)

        options = dict(conditioning=self.conditioning, condition_noise=self.condition_noise, context=self.context, lag=self._lag())
        runs = {m: filter_members(self.pipeline, member_cycles(m), [m], settings, self.latent_seed, **options) for m in members}
        finished = {m: next(runs[m]) for m in members}
        analyses = np.concatenate([finished[m].analysis for m in members])  # (local members, C, H, W)
        histories: dict[int, torch.Tensor] = {}  # history="analyses": each member's encoded analyses, from the spin-up's end
        states = self._to_state(analyses)
        if start == 0:
            self.stats.assess(0, E=self._to_state(gather_members(analyses, self.N)))
        previous = 0 if start == 0 else kko[start - 1]
        steps = range(start, len(kko))
        if rank == 0:
            steps = progbar(steps, desc=f"LatentDA filter (the HMM's model), {self.N} members")
        for ko in steps:
            y = yy[ko]
            _check_same(y, f"the observations of cycle {ko}")
            H = self._observation_matrix(HMM, ko)  # once a cycle: y_k's groups and, with innovation="forecast", each shift
            groups = self._raw_groups(HMM, ko, y, H)
            operator = self._with_representation_error(ObservationOperator(groups))
            forecasts = np.stack([advance(HMM.Dyn, tseq, x, previous, kko[ko]) for x in states])  # x_f = M(x_a)
            forecast_fields = _states_to_fields(forecasts, shape, index)
            everyone = gather_members(forecast_fields, self.N)
            diverged = np.flatnonzero(~np.isfinite(everyone.reshape(self.N, -1)).all(axis=1))
            if diverged.size:  # every process holds every forecast: the same error everywhere
                raise LatentdaError(f"the model's forecast of cycle ko = {ko} is not finite for member(s) "
                                    f"{', '.join(map(str, diverged))}: the model diverged from their analyses")
            guided = ko >= start + self.spin_up  # the forecast is the background (after the spin-up)
            backgrounds = everyone
            if guided and self.ensemble_update:  # the hybrid: the (L)ETKF's analyses are the latentda step's backgrounds
                updated = self._ensemble_analysis(HMM, ko, y, _fields_to_states(everyone, index))
                backgrounds = _states_to_fields(updated, shape, index)
                forecast_fields, forecasts = backgrounds[members], updated[members]
            noise = self._background_noise(backgrounds) if guided else None
            encoded = guided and self.history == "analyses"
            if encoded and not histories:  # the first guided cycle: the history the spin-up's draws left
                histories = {m: finished[m].state.history for m in members}
            paired, drawn = [], {}
            for i, (m, fields) in enumerate(zip(members, forecast_fields)):
                background = self._background(fields, noise) if guided else []
                state, used = finished[m].state, options
                if encoded:  # the new state alone, given the encoded analyses (module docstring, history="analyses")
                    state, used = dataclasses.replace(state, history=histories[m], recent=[]), {**options, "lag": 1}
                y_groups = groups
                if self.increment and guided:  # D(z_b): the same draw (the member's state and random numbers) without y_k
                    alone = self._with_representation_error(ObservationOperator(background))
                    paired.append(next(filter_members(self.pipeline, [alone], [m], settings, self.latent_seed,
                                                      state=state, **used)).analysis)
                    if self.innovation == "forecast":  # z_a given y_k − H x_f + H D(z_b) (module docstring)
                        shifted = np.asarray(y, dtype=np.float64) + H @ (self._to_state(paired[-1])[0] - forecasts[i])
                        y_groups = self._raw_groups(HMM, ko, shifted, H)
                operator_m = self._with_representation_error(ObservationOperator([*y_groups, *background]))
                if encoded:
                    drawn[m] = next(filter_members(self.pipeline, [operator_m], [m], settings, self.latent_seed, state=state, **used))
                else:
                    pending[m] = operator_m
            finished = {m: drawn[m] if encoded else next(runs[m]) for m in members}
            analyses = np.concatenate([finished[m].analysis for m in members])
            if paired:  # x_a = x_f + D(z_a) − D(z_b)
                analyses = forecast_fields + analyses - np.concatenate(paired)
            if encoded:  # E(x_a): the states the model steps become the window's history
                latents = self.pipeline.encode(analyses[:, None])  # (local members, 1, c, h, w)
                keep = self.pipeline.window - 1 if self.context is None else int(self.context)  # lag 1's conditioning states
                histories = {m: torch.cat([histories[m], latents[i : i + 1].to(histories[m])], dim=1)[:, -keep:]
                             for i, m in enumerate(members)}
            states = self._to_state(analyses)
            if self.forecasts:
                self.stats.assess(kko[ko], ko, "f", E=_fields_to_states(everyone, index))
            self.stats.assess(kko[ko], ko, E=self._to_state(gather_members(analyses, self.N)))
            ratio = operator.residual_ratio(torch.from_numpy(analyses[:, None]).double()).numpy()
            self.stats.residual_ratio[ko] = float(np.mean(gather_members(ratio, self.N)))
            previous = kko[ko]

    def _assess_smoothed(self, HMM, cycle, start: int) -> None:
        """``s`` statistics of the lagged filter's final estimates (module docstring): the first state a
        cycle sampled once it samples ℓ (no later cycle samples it again), and at the last cycle all of them."""
        lag, kko = self._lag(), HMM.tseq.kko
        if lag == 1 or cycle.sampled is None:
            return
        n = cycle.sampled.shape[1]
        last = start + cycle.cycle - 1 == len(kko) - 1
        for j in range(n) if last else range(1 if n == lag else 0):
            ko = start + cycle.cycle - n + j  # the filter's cycle c is ko = start + c − 1 (c = 0: the start)
            if ko >= start:
                fields = gather_members(self.pipeline.decode(cycle.sampled[:, j : j + 1])[:, 0], self.N)
                self.stats.assess(kko[ko], ko, "s", E=self._to_state(fields))


def evenly_spaced(cycles: list[int], count: int) -> list[int]:
    """At most ``count`` of ``cycles`` (sorted), spread evenly from the first to the last."""
    return sorted({cycles[i] for i in np.linspace(0, len(cycles) - 1, min(count, len(cycles))).round().astype(int)})


def advance(dyn, tseq, x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """x_stop from x_start by the model's steps x_{k+1} = dyn(x_k, t_k, dt), as ``HMM.simulate`` makes the truth
    (``start``/``stop``: model step indices, e.g. ``tseq.kko[ko]`` and ``tseq.kko[ko + 1]`` for one cycle)."""
    for k in range(start, stop):
        x = dyn(x, tseq.tt[k], tseq.dt)
    return x


def true_past_forecast(pipeline, HMM, xx, ko: int, lead: int, members: list[int], settings: PosteriorSettings,
                       context: int, condition_noise: float, seed: int, state_index: Any = None,
                       conditioning: str = "mmps") -> np.ndarray:
    """(members, lead, Nx): the prior's forecast of x_{ko+1} … x_{ko+lead} (DAPPER states) from the encoded true
    states x_{ko−c+1}, …, x_ko (c = ``context``; ``conditioning`` mmps with noise σ_c = ``condition_noise``, or
    known for a prior trained with known frames), members drawn with ``seed`` — one cycle of :func:`forecast_skill`."""
    from latentda.posterior.forecast import forecast_members

    kko = np.asarray(HMM.tseq.kko)
    layout = pipeline.layout
    index = None if state_index is None else np.asarray(state_index)
    past = _states_to_fields(xx[kko[ko - context + 1 : ko + 1]], (layout.num_channels, *layout.shape), index)
    run = forecast_members(pipeline, list(members), lead, settings, seed=seed, initial=pipeline.encode(past)[None],
                           conditioning=conditioning, condition_noise=condition_noise, context=context)
    fields = np.stack([member_fields[1:] for _, member_fields in run])  # (members, lead, C, H, W); lead 0 is x_ko's
    return np.stack([_fields_to_states(fields[:, step], index) for step in range(lead)], axis=1)


def forecast_skill(pipeline, HMM, xx, lead: int = 1, cycles: int = 8, members: int = 4, settings: Any = None,
                   context: int | None = None, condition_noise: float = 0.05, seed: int = 0,
                   state_index: Any = None, conditioning: str = "mmps", check_time_step: bool = True) -> dict:
    r"""How close the learned prior's dynamics are to the twin experiment's model, on the experiment's own
    truth ``xx``: forecasts from the true past, ℓ = 1 … ``lead`` cycles ahead, at ``cycles`` observation
    cycles ko spread evenly over those after the burn-in (``HMM.tseq.masko``).

    - ``prior``: latentda's forecast (:func:`latentda.posterior.forecast.forecast_members`, ``members``
      members, conditioned (``conditioning``: MMPS with noise σ_c, or known) on the encoded true states x_{ko−c+1}, …, x_ko, c =
      ``context``, default the pipeline's forecast context, its blanket overlap) — what a filter's cycle
      does from a perfect history (the lagged filter's default context is K − ℓ: pass it to match);
    - ``model``: DAPPER's own model ``HMM.Dyn`` from D(E(x_ko)), the truth as the autoencoder returns it —
      what an exact model does from the autoencoder's floor;
    - ``persistence``: x_ko.

    Scores by DAPPER's definitions: rmse = the RMS over the grid of the error of the ensemble mean,
    x̄ − x_{ko+ℓ}; spread = the root of the grid mean of the ensemble variance (ddof 1); each averaged over
    the cycles. The prior's rmse at ℓ = 1 against the model's is the learned dynamics' error per cycle
    that an assimilation must correct, beside the observations' noise. States ↔ fields as in
    :class:`LatentDA` (``state_index``; ``check_time_step`` as there). Returns {"leads", "cycles" (the ko used), "context", "members",
    "conditioning", "condition_noise", "settings" (the PosteriorSettings fields not at their defaults), "prior_rmse",
    "prior_spread", "model_rmse", "persistence_rmse"} (lists by lead)."""
    from latentda.posterior.forecast import default_context

    tseq = HMM.tseq
    kko = np.asarray(tseq.kko)
    settings = _posterior_settings(settings)
    context = default_context(pipeline, settings) if context is None else context
    if lead < 1 or cycles < 1 or members < 2:
        raise LatentdaError(f"forecast_skill needs lead ≥ 1, cycles ≥ 1 and members ≥ 2, got {lead}, {cycles}, {members}")
    if check_time_step:
        check_cycle_step(pipeline, tseq.dto)
    valid = [ko for ko in range(len(kko)) if tseq.masko[ko] and ko >= context - 1 and ko + lead < len(kko)]
    if not valid:
        raise LatentdaError(f"no cycle after the burn-in has {context} true states before it and {lead} after it")
    chosen = evenly_spaced(valid, cycles)
    shape = (pipeline.layout.num_channels, *pipeline.layout.shape)
    index = None if state_index is None else np.asarray(state_index)

    def rms(values: np.ndarray) -> float:
        return float(np.sqrt(np.mean(values**2)))

    scores = {name: np.zeros((len(chosen), lead)) for name in ("prior_rmse", "prior_spread", "model_rmse", "persistence_rmse")}
    for row, ko in enumerate(chosen):
        targets = xx[kko[ko + 1 : ko + lead + 1]]
        ensemble = true_past_forecast(pipeline, HMM, xx, ko, lead, list(range(members)), settings, context,
                                      condition_noise, seed + ko, index, conditioning)  # (members, lead, Nx)
        model = _fields_to_states(pipeline.decode(pipeline.encode(_states_to_fields(xx[kko[ko]][None], shape, index))), index)[0]  # D(E(x_ko))
        for step in range(lead):
            model = advance(HMM.Dyn, tseq, model, kko[ko + step], kko[ko + step + 1])  # one cycle: dko model steps
            states = ensemble[:, step]
            scores["prior_rmse"][row, step] = rms(states.mean(0) - targets[step])
            scores["prior_spread"][row, step] = float(np.sqrt(states.var(0, ddof=1).mean()))
            scores["model_rmse"][row, step] = rms(model - targets[step])
            scores["persistence_rmse"][row, step] = rms(xx[kko[ko]] - targets[step])
    given = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if getattr(settings, f.name) != f.default}
    return {"leads": list(range(1, lead + 1)), "cycles": [int(ko) for ko in chosen], "context": int(context),
            "members": int(members), "conditioning": conditioning, "condition_noise": float(condition_noise), "settings": given,
            **{name: [float(v) for v in values.mean(0)] for name, values in scores.items()}}
