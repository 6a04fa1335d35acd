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

**What it uses of the HMM.** Not ``HMM.Dyn`` nor ``HMM.X0``: the learned prior is the dynamics and
the initial law, so the pipeline must have been trained on the model's states taken every ``dto``
(``HMM.tseq.dko`` model steps = one pipeline time step). States exist at k = 0 and at the
observation times kko; between them (dko > 1) nothing is assessed (the ``u`` series of
``store_u=True`` keep NaN there).

**State vectors ↔ fields.** A state x (Nx,) is the pipeline's fields (C, H, W) flattened in C order
(channels in ``pipeline.layout.channels`` order) by default. ``state_index`` (Nx,) changes that: entry
i of the state is the field entry ``state_index[i]`` of the C-order flattening (e.g.
``np.ravel_multi_index`` of a Fortran layout, or a channel permutation); Nx must equal C·H·W.

**Observations.** Supported: operators *linear* in the state (any time dependence: ``HMM.Obs(ko)`` is
read per cycle, positions may change) with a *diagonal* noise covariance ``HMM.Obs(ko).noise.C``
(zero mean). The operator's matrix is taken from ``Obs(ko).linear(x)`` when it has one, else by
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
``u``) for the analysis. ``smoother``: one reanalysis of the whole window (k = 0 and every
observation time, at least the prior's window K of states) conditioned on all of yy, recorded as
``s`` (smoothed) at every ko and ``u``; DAPPER keeps ``s`` series for methods with a ``Lag``
attribute, which this mode sets (``Lag = "window"``). A per-cycle ``residual_ratio`` (ensemble mean
of the std of (y − H x)/σ_y) is recorded too (``xp.avrgs.residual_ratio``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    import dapper.stats
    from dapper.da_methods import da_method
    from dapper.tools.progressbar import progbar
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("latentda.integrations.dapper needs DAPPER: pip install 'latentda[dapper]' (dapper==1.7.1)") from error

from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.posterior.filtering import filter_members, join_cycles
from latentda.posterior.reanalysis import PosteriorSettings, posterior_members

__all__ = ["LatentDA", "observation_operator", "observation_matrix"]

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


def _noise_std(operator, count: int) -> np.ndarray:
    covariance = getattr(getattr(operator, "noise", None), "C", None)
    if covariance is None or np.isscalar(covariance):
        raise LatentdaError("the observation noise must be a Gaussian with a positive covariance (Obs.noise.C)")
    full = np.asarray(covariance.full, dtype=np.float64)
    if full.shape != (count, count) or not np.allclose(full, np.diag(np.diag(full))):
        raise LatentdaError("LatentDA supports diagonal observation noise covariances only")
    variance = np.diag(full)
    if not (variance > 0).all():
        raise LatentdaError("the observation noise variances must be positive")
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


@da_method()
class LatentDA:
    """latentda as a DAPPER method (module docstring). ``settings``: a
    :class:`latentda.posterior.reanalysis.PosteriorSettings` or a dict of its fields (None: the
    pipeline's defaults); ``conditioning``, ``condition_noise``, ``context``, ``lag``: the filter's
    (:func:`latentda.posterior.filtering.filter_members`)."""

    pipeline: Any
    N: int = 8
    mode: str = "filter"
    latent_seed: int = 0  # the members' random streams (DAPPER's own `seed` attribute seeds the twin experiment)
    settings: Any = None
    conditioning: str = "mmps"
    condition_noise: float = 0.05
    context: Any = None
    lag: int = 1
    forecasts: bool = True
    state_index: Any = None

    def __post_init__(self) -> None:
        if self.mode not in ("filter", "smoother"):
            raise LatentdaError(f"mode must be filter or smoother, got {self.mode!r}")
        if self.mode == "smoother":
            self.Lag = "window"  # DAPPER keeps the 's' (smoothed) series of methods with a Lag

    # ------------------------------------------------------------------ helpers
    def _posterior_settings(self) -> PosteriorSettings:
        if isinstance(self.settings, PosteriorSettings):
            return self.settings
        return PosteriorSettings(**dict(self.settings or {}))

    def _field_shape(self) -> tuple[int, int, int]:
        layout = self.pipeline.layout
        return (layout.num_channels, *layout.shape)

    def _to_state(self, fields: np.ndarray) -> np.ndarray:
        flat = np.asarray(fields, dtype=np.float64).reshape(fields.shape[0], -1)
        return flat if self.state_index is None else flat[:, np.asarray(self.state_index)]

    def _operator(self, HMM, ko: int, y) -> ObservationOperator:
        obs = HMM.Obs(ko)
        size = HMM.Dyn.M
        matrix = observation_matrix(obs, size)
        operator = observation_operator(matrix, y, _noise_std(obs, matrix.shape[0]), self._field_shape(), self.state_index)
        return self._with_representation_error(operator)

    def _with_representation_error(self, operator: ObservationOperator) -> ObservationOperator:
        error = getattr(self.pipeline, "representation_error", None)
        if error is None or not self._posterior_settings().representation_error:
            return operator
        return operator.with_representation_error(np.asarray(error) * np.asarray(self.pipeline.statistics.std, dtype=np.float64))

    def _check(self, HMM) -> None:
        C, H, W = self._field_shape()
        if HMM.Dyn.M != C * H * W:
            raise LatentdaError(f"the HMM's state has {HMM.Dyn.M} entries, the pipeline's fields {C}×{H}×{W} = {C * H * W}")
        if self.state_index is not None:
            index = np.asarray(self.state_index)
            if index.shape != (HMM.Dyn.M,) or not np.array_equal(np.sort(index), np.arange(HMM.Dyn.M)):
                raise LatentdaError("state_index must be a permutation of range(Nx)")

    def _new_residual_series(self) -> None:
        self.stats.new_series("residual_ratio", 1, self.stats.Ko + 1)

    # ------------------------------------------------------------------ DAPPER's entry point
    def assimilate(self, HMM, xx, yy):
        self._check(HMM)
        self._new_residual_series()
        settings = self._posterior_settings()
        members = list(range(self.N))
        kko = HMM.tseq.kko
        if self.mode == "smoother":
            cycles = [None] + [self._operator(HMM, ko, yy[ko]) for ko in range(len(kko))]
            window = join_cycles(cycles)
            if window.length < self.pipeline.window:
                raise LatentdaError(f"the smoother needs at least {self.pipeline.window} states (k = 0 and the "
                                    f"observation times), the HMM has {window.length}")
            ensemble = np.stack([fields for _, fields, _ in posterior_members(self.pipeline, window, members, settings, self.latent_seed)])
            self.stats.assess(0, E=self._to_state(ensemble[:, 0]))
            for ko, k in enumerate(kko):
                E = self._to_state(ensemble[:, ko + 1])
                self.stats.assess(k, ko, "us", E=E)
                self.stats.residual_ratio[ko] = float(cycles[ko + 1].residual_ratio(
                    torch.from_numpy(ensemble[:, ko + 1 : ko + 2]).double()).mean())
            return

        def cycles():  # lazy: yy[ko] is read when cycle ko + 1 is computed, after cycle ko was assessed
            yield None  # k = 0: the start, a prior sample
            for ko in range(len(kko)):
                yield self._operator(HMM, ko, yy[ko])

        run = filter_members(self.pipeline, cycles(), members, settings, self.latent_seed, conditioning=self.conditioning,
                             condition_noise=self.condition_noise, context=self.context, forecasts=self.forecasts,
                             lag=self.lag)
        # DAPPER's own progress bar (its methods show one; off under pytest or where DAPPER's config disables it)
        for cycle in progbar(run, desc=f"LatentDA filter, {self.N} members", total=len(kko) + 1):
            E = self._to_state(cycle.analysis)
            if cycle.cycle == 0:
                self.stats.assess(0, E=E)
                continue
            ko = cycle.cycle - 1
            k = kko[ko]
            if cycle.forecast is not None:
                self.stats.assess(k, ko, "f", E=self._to_state(cycle.forecast))
            self.stats.assess(k, ko, E=E)
            self.stats.residual_ratio[ko] = float(np.mean(cycle.residual_ratio))
