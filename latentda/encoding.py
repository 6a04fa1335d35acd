"""``latentda encode``: stream a dataset through the encoder into a latent zarr store.

Frames are read, standardised and encoded ``batch_size`` at a time, and each batch is written into
its region of the output before the next is read, so memory is bounded by one batch whatever the
dataset size. The store holds::

    latent(trajectory?, time, channel, latent_y, latent_x)   float32, one time step per chunk
    coordinates trajectory, time                              copied from the input
    attrs latentda_layout, latentda_statistics (JSON)        what decoding back to fields needs
          compression_factor, autoencoder, Conventions
          latentda_autoencoder_sha256                        the autoencoder's fingerprint: train-ldm
                                                             refuses latents of another one

and is written to a temporary path and renamed when complete.

Several processes (``torchrun`` / ``accelerate launch``): the batches of states are dealt round-robin
over the processes (batch i to process i mod P, each on its own device); the main process creates the
temporary store, every process writes its batches into their regions (one time step per chunk: no two
processes write one chunk), and the main process renames the store once all have finished. A bad
value met by any process stops every process with its message, and nothing is left.

Masks and missing values: masked pixels (the autoencoder's fixed mask, ``FieldLayout.mask``) enter
the encoder as 0, the channel mean, as in training. A state with NaN outside the mask is *missing*:
refused (naming the variable and the step) unless the autoencoder was trained with
``allow_missing``; then its latent is NaN and the store lists it in the attribute
``latentda_missing_states`` (JSON [[trajectory, step], ...]) so that ``train-ldm`` uses no window
holding it.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentda.components import autoencoder_fingerprint, load_autoencoder
from latentda.data import LATENT, atomic_path, open_dataset, time_step
from latentda.data.io import already_exists, consolidate, create_store, remove_path, write_region
from latentda.data.windows import MISSING_ATTR
from latentda.data.layout import CONVENTIONS, TIME, TRAJECTORY
from latentda.data.statistics import check_finite
from latentda.processes import first_text, gather_texts, process_state, raise_first, run_on_main

__all__ = ["encode_dataset", "missing_states"]


def encode_dataset(
    autoencoder: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
    time_dim: str | None = None,
) -> Path:
    """Encode every state of ``data`` with the autoencoder folder ``autoencoder`` into ``out``
    (``time_dim``: the name of ``data``'s time dimension, when not found from its CF attributes) on
    ``device`` (default: this process's, a GPU when there is one). The grid must be the model's and
    the time axis regular (checked before anything is written). Under torchrun / accelerate launch
    every process must call it (module docstring): the batches are dealt over them."""
    state = process_state()
    main = state.is_main_process
    device = device or state.device
    if (Path(out).exists() or Path(out).is_symlink()) and not overwrite:  # every process, before any waits
        raise already_exists(Path(out))
    model, layout, statistics = load_autoencoder(autoencoder, device)
    dataset = open_dataset(data, time_dim)
    layout.check(dataset)
    time_step(dataset[TIME])  # the prior trained on these latents needs one time step
    has_trajectories = TRAJECTORY in dataset[layout.variables[0].name].dims
    trajectories = list(range(dataset.sizes[TRAJECTORY])) if has_trajectories else [None]
    steps = dataset.sizes[TIME]
    c, h, w = model.latent_shape
    lead = (len(trajectories),) if has_trajectories else ()
    dims = ([TRAJECTORY] if has_trajectories else []) + [TIME, "channel", "latent_y", "latent_x"]
    coords = {TIME: dataset[TIME].variable, "channel": np.arange(c), "latent_y": np.arange(h), "latent_x": np.arange(w)}
    if has_trajectories:
        coords[TRAJECTORY] = dataset[TRAJECTORY].variable
    attrs = {
        "Conventions": CONVENTIONS,
        "title": "latent trajectories written by latentda encode",
        "autoencoder": str(Path(autoencoder).resolve()),
        "latentda_autoencoder_sha256": autoencoder_fingerprint(autoencoder),
        "source_data": str(Path(data).resolve()),
        "compression_factor": float(model.compression_factor),
        "latentda_layout": json.dumps(layout.to_dict()),
        "latentda_statistics": json.dumps(statistics.to_dict()),
    }
    variables = {LATENT: (dims, "float32", {"long_name": "autoencoder latent state", "units": "1"})}
    batches = [(index, trajectory, start) for index, trajectory in enumerate(trajectories) for start in range(0, steps, batch_size)]
    mine = batches[state.process_index :: state.num_processes]
    with ExitStack() as output:  # on the main process: the temporary store, renamed to ``out`` on leaving

        def create() -> str:
            temporary = output.enter_context(atomic_path(out, overwrite=overwrite))
            create_store(temporary, coords, variables, attrs)
            return str(temporary)

        temporary = Path(first_text(run_on_main(create, main) or ""))
        if not main:  # leaving on an error or interrupt: its last write may have followed the main one's removal

            def remove_on_error(kind, error, traceback) -> bool:
                if kind is not None:
                    remove_path(temporary)
                return False

            output.push(remove_on_error)
        shown = "encode" if state.num_processes == 1 else f"encode (process 0's share of {state.num_processes})"
        bar = tqdm(total=sum(min(start + batch_size, steps) - start for _, _, start in mine), desc=shown, unit="state",
                   disable=not (progress and main))
        missing: list[list] = []
        on_mask, error = 0, None
        try:
            with torch.no_grad():
                for index, trajectory, start in mine:
                    stop = min(start + batch_size, steps)
                    frames = layout.to_array(dataset, trajectory, slice(start, stop))
                    if layout.mask is not None:  # values where the model has none: not the encoder's input in training
                        on_mask += int((np.isfinite(frames) & ~layout.mask).sum())
                        frames = layout.off_mask(frames)  # nor checked: a fill value on land is no error
                    where = "" if trajectory is None else f" of trajectory {index}"
                    check_finite(frames, layout.channels, where, statistics, layout.mask, layout.allow_missing, start,
                                 hint="fill them first: this autoencoder was trained without allow_missing")
                    x = statistics.standardise(frames.astype(np.float32))
                    z = model.encode(torch.from_numpy(np.nan_to_num(x)).to(device)).cpu().numpy()
                    gaps = missing_states(x, layout.mask)
                    z[gaps] = np.nan
                    missing += [[index if has_trajectories else None, start + int(i)] for i in np.flatnonzero(gaps)]
                    region = (index, slice(start, stop)) if has_trajectories else (slice(start, stop),)
                    write_region(temporary, {LATENT: z}, region)
                    bar.update(stop - start)
        except Exception as caught:  # noqa: BLE001 — raised on every process just below
            error = caught
        bar.close()
        try:
            raise_first(error)  # also: every process has written its batches
        finally:
            error = None  # see latentda.processes.raise_first: no reference cycle
        shares = [json.loads(text) for text in gather_texts(json.dumps([on_mask, missing]))]
        on_mask = sum(count for count, _ in shares)
        missing = sorted((pair for _, pairs in shares for pair in pairs), key=lambda pair: (pair[0] or 0, pair[1]))
        if on_mask and main:
            warnings.warn(f"{on_mask} value(s) lie on the autoencoder's fixed mask (pixels NaN at every training step): "
                          "encoded as missing, as in training", stacklevel=2)

        def finish() -> None:
            if missing:
                import zarr

                zarr.open_group(temporary, mode="a").attrs[MISSING_ATTR] = json.dumps(missing)
            consolidate(temporary)
            output.close()  # renamed into place

        run_on_main(finish, main)
    return Path(out)


def missing_states(frames: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(T,) True for each state of ``frames`` (T, C, H, W) holding NaN where the fixed ``mask``
    (C, H, W, True where valid; None: everywhere) says there are values."""
    nan = np.isnan(frames)
    if mask is not None:
        nan &= mask
    return nan.any(axis=(1, 2, 3))
