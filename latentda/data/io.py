"""Reading and writing CF-style datasets (netCDF or zarr), safely.

Inputs are opened lazily (zarr without dask: indexing reads only the chunks it touches), so each
process of a distributed run reads only its own samples. Outputs are written to a temporary sibling
path and renamed into place once complete, so an interrupted or failed write never leaves a partial
file and never overwrites an existing one unless asked to.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import threading
import uuid
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import xarray as xr
import zarr

from latentda.data.times import standard_time_axis
from latentda.errors import LatentdaError

__all__ = ["open_dataset", "input_format", "atomic_path", "write_dataset", "remove_path", "dataset_format", "output_format", "create_store",
           "write_region", "read_values", "check_output_path", "check_replaceable_folder", "OutputLock"]

_ZARR_SUFFIXES = (".zarr",)
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5")


def dataset_format(path: str | os.PathLike) -> str:
    """Return ``"zarr"`` or ``"netcdf"`` from a path's suffix (a directory counts as zarr)."""
    path = Path(path)
    if path.suffix in _ZARR_SUFFIXES or path.is_dir():
        return "zarr"
    if path.suffix in _NETCDF_SUFFIXES:
        return "netcdf"
    raise LatentdaError(f"{path}: unknown format (expected a .zarr store or a .nc netCDF file)")


def output_format(path: str | os.PathLike) -> str:
    """The format an output path will be written in: by suffix, a path without one being a zarr store."""
    return dataset_format(path) if Path(path).suffix else "zarr"


def check_output_path(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], option: str = "--out",
                      replaced: bool = True) -> None:
    """Refuse an output that is, lies inside, or (when the output is ``replaced`` as a whole, as
    ``--overwrite`` does) contains one of the ``inputs`` (name → path).

    Paths are compared resolved (symlinks, ``..``, relative spellings), so an output can never
    replace or write into the data a command reads. Inputs that are not local paths (hub ids) never
    match anything that exists. An output whose folder is (or lies under) an existing file is refused
    too: it could not be created.
    """
    target = Path(out).expanduser().resolve()
    blocking = next((parent for parent in target.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise LatentdaError(f"{option} {out}: {blocking} is a file, not a folder: choose another output path")
    for name, value in inputs.items():
        if value is None:
            continue
        source = Path(value).expanduser().resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "is inside"
        elif target in source.parents and replaced:
            relation = "contains"
        else:
            continue
        raise LatentdaError(f"{option} {out} {relation} the input {name} {value}: choose another output path")


def read_values(variable: xr.DataArray) -> np.ndarray:
    """The values of a (lazily opened) variable, with a one-line error when a chunk cannot be read.

    A corrupt chunk makes the codecs raise whatever they raise (RuntimeError from zstd, ValueError
    from blosc, ...); the user needs to know which variable is broken. (A *missing* chunk reads as the
    fill value, NaN: the finite checks of the callers name it.)
    """
    try:
        return np.asarray(variable.values)
    except Exception as error:  # noqa: BLE001 - the codecs' exception types are not documented
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LatentdaError(f"cannot read variable '{variable.name}' ({message}): a corrupt chunk?") from None


_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")  # netCDF-3 (classic, 64-bit, CDF-5), HDF5


def input_format(path: str | os.PathLike) -> str:
    """``"zarr"`` or ``"netcdf"`` from what an existing input *is*, whatever its name: a directory is a
    zarr store, a file is netCDF if it starts with the netCDF-3 or HDF5 signature (``.cdf``, ``.nc4``,
    no suffix, …); anything else is a one-line error."""
    path = Path(path)
    if path.is_dir():
        return "zarr"
    with open(path, "rb") as handle:
        head = handle.read(8)
    if any(head.startswith(magic) for magic in _NETCDF_MAGIC):
        return "netcdf"
    raise LatentdaError(f"{path}: neither a netCDF file (netCDF-3 or HDF5 signature) nor a zarr store")


def _input_paths(path: Path) -> list[Path]:
    """The files a dataset argument names: the path itself, or the sorted matches of a glob pattern
    (``data/storm_*.cdf``) when no file has that name."""
    if path.exists():
        return [path]
    if any(character in str(path) for character in "*?["):
        matches = sorted(Path(match) for match in glob.glob(str(path)))
        if matches:
            return matches
        raise LatentdaError(f"{path}: the pattern matches no file")
    raise LatentdaError(f"{path}: no such file or directory")


def open_dataset(path: str | os.PathLike, time_dim: str | None = None) -> xr.Dataset:
    """Open a netCDF file or a zarr store lazily, with a one-line error if it cannot be read; the
    format is told by the content (:func:`input_format`), not the name.

    ``path`` may be a glob pattern: the files it matches (e.g. one variable each) are merged into one
    dataset; their coordinates must agree exactly, and a variable in two files is an error. The time
    axis is renamed ``time`` and CF-decoded (:func:`latentda.data.times.standard_time_axis`;
    ``time_dim`` names it when it is not found by its CF attributes)."""
    paths = _input_paths(Path(path))
    if len(paths) > 1:
        parts = [open_dataset(part, time_dim) for part in paths]
        try:
            return xr.merge(parts, compat="no_conflicts", join="exact", combine_attrs="drop_conflicts")
        except (ValueError, xr.MergeError) as error:
            message = str(error).splitlines()[0]
            hint = ""
            times = [part["time"].values for part in parts if "time" in part.coords]
            if len(times) == len(parts) and len({tuple(np.asarray(t).ravel()) for t in times}) == len(parts):
                hint = (": they hold different times (e.g. one file a month): join them along time into one store "
                        "first, one time step per chunk (docs/cluster.md, \"Data\")")
            raise LatentdaError(f"{path}: the {len(paths)} files do not merge into one dataset ({message}){hint}") from None
    path = paths[0]
    fmt = input_format(path)
    try:
        dataset = _open_one(path, fmt)
    except LatentdaError:  # latentda's own reading of the file (its variables in a group)
        raise
    except Exception as error:  # the backends raise many types; the user needs one line
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        try:  # times xarray cannot decode (units "hours since doomsday"): latentda's own check names them
            _standard_time_axis(_open_one(path, fmt, decode_times=False), time_dim, path)
        except LatentdaError as undecodable:
            if "cannot be decoded" in str(undecodable):
                raise
        except Exception:  # noqa: BLE001 — not the times: the first error tells
            pass
        raise LatentdaError(f"{path}: not a readable {fmt} dataset ({message})") from None
    return _standard_time_axis(dataset, time_dim, path)


def _open_one(path: Path, fmt: str, **options) -> xr.Dataset:
    """One netCDF file (netCDF-3 through scipy, netCDF-4/HDF5 through h5netcdf) or zarr store, lazily.
    xarray's warning that it decodes dates with cftime is silenced: latentda reads them itself (times)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unable to decode time axis into full numpy.datetime64")
        if fmt == "zarr":
            with quiet_zarr():  # stores without consolidated metadata are fine
                return xr.open_zarr(path, chunks=None, consolidated=None, **options)
        with open(path, "rb") as handle:
            classic = handle.read(3) == b"CDF"
        dataset = xr.open_dataset(path, engine="scipy" if classic else "h5netcdf", chunks=None, **options)
    if not dataset.data_vars and not classic:  # the fields may sit in a group, which latentda does not read
        groups = _netcdf_groups(path)
        if groups:
            raise LatentdaError(f"{path}: the root group holds no variables (they are in group(s) {', '.join(groups)}); "
                                "latentda reads the root group: write the fields there (e.g. "
                                "xr.open_dataset(path, group=...).to_netcdf(new_path))")
    return dataset


def _netcdf_groups(path: Path) -> list[str]:
    """The names of a netCDF-4 file's groups (none when they cannot be listed)."""
    import h5netcdf

    try:
        with h5netcdf.File(path, "r") as handle:
            return sorted(handle.groups)
    except Exception:  # noqa: BLE001 — only a hint for an error message
        return []


def _standard_time_axis(dataset: xr.Dataset, time_dim: str | None, path: Path) -> xr.Dataset:
    try:
        return standard_time_axis(dataset, time_dim)
    except LatentdaError as error:
        raise LatentdaError(f"{path}: {error}") from None


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


FOLDER_JUNK = (".DS_Store", "Thumbs.db")  # what file browsers leave in a folder: a replacement may remove it (not .git)


def check_replaceable_folder(path: str | os.PathLike, entries: Sequence[str], marker: str, what: str,
                             verb: str = "replacing") -> None:
    """``path`` may be replaced whole by a new ``what`` folder (a pipeline, an evaluation report): absent, an
    empty folder, or an earlier ``what`` — ``marker`` in it and nothing but ``entries`` and a file browser's
    junk. Anything else there would be deleted with it: refused in one line (``verb``: the action named)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise LatentdaError(f"{path}: exists and is not {what} folder: write to another path or remove it")
    if not path.is_dir():
        return
    held = sorted(entry.name for entry in path.iterdir() if entry.name not in FOLDER_JUNK)
    others = [name for name in held if name not in entries]
    if held and (marker not in held or others):
        detail = f"holds {', '.join(others[:3])}{', …' if len(others) > 3 else ''}" if others else f"has no {marker}"
        raise LatentdaError(f"{path}: a folder that is not only {what} ({detail}); {verb} would delete it: "
                            "write to another path, or remove what it holds")


class OutputLock:
    """An exclusive lock on an output being written: ``fcntl.flock`` on ``.<name>.lock`` beside it, held
    until :meth:`release` (or the process ends). A second run writing the same output at the same time —
    two jobs of an array given one ``--out``, a ``--resume`` while the first run still goes — is refused in
    one line instead of sharing its store. Where ``fcntl`` does not exist (Windows) nothing is locked."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.path = self.lock_path(self.out)
        self.handle = None
        self.created: list[Path] = []
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            handle = self._open()
        except OSError as error:
            self._remove_created()
            raise LatentdaError(f"{self.out}: cannot write beside it ({error.strerror or error})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the file may have been released and removed between our open and our lock: then it is not the lock
            if os.fstat(handle.fileno()).st_ino != os.stat(self.path).st_ino:
                raise BlockingIOError
        except OSError:
            handle.close()
            self._remove_created()
            raise self.busy(self.out) from None
        self.handle = handle

    def _open(self, attempts: int = 5):
        """The lock file, opened for appending, with the folders above it: those this call created are
        recorded (innermost first), each made alone so that one another process made is never counted; a
        folder another lock removed in between is made again."""
        for attempt in range(attempts):
            for folder in reversed(self.path.parents):  # outermost first
                if not folder.exists():
                    try:
                        folder.mkdir()
                        self.created.insert(0, folder)
                    except FileExistsError:
                        pass
            try:
                return open(self.path, "a")
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise

    def _remove_created(self) -> None:
        """The folders this lock created, where nothing else was put in them (a refused run leaves nothing)."""
        for folder in self.created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break

    @staticmethod
    def lock_path(out: str | os.PathLike) -> Path:
        """The lock file of ``out``: hidden, beside it (``.`` is the folder it names)."""
        out = Path(out).absolute()
        out = out.resolve() if out.name in ("", ".", "..") else out
        return out.with_name(f".{out.name}.lock")

    @staticmethod
    def busy(out: str | os.PathLike) -> LatentdaError:
        return LatentdaError(f"{out}: another process is writing it now; wait for it to finish, or write to another path")

    @staticmethod
    def held(out: str | os.PathLike) -> bool:
        """Whether a run holds the lock of ``out`` now (tried and let go at once; nothing is created)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return False
        try:
            handle = open(OutputLock.lock_path(out), "r")  # a holder keeps its file; none: nobody holds it
        except OSError:
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """Remove the lock file and release the lock (again: nothing)."""
        if self.handle is not None and not self.handle.closed:
            self.path.unlink(missing_ok=True)
            self.handle.close()
            self._remove_created()


def already_exists(path: str | os.PathLike) -> LatentdaError:
    """The one-line error for an output that exists, worded for the API and the command line."""
    return LatentdaError(f"{path}: already exists (replace it with overwrite=True, --overwrite on the command line)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` when the block succeeds.

    On any exception the temporary is removed and ``path`` is left as it was. An existing ``path``
    (checked before and after the block: it may appear meanwhile) is an error unless ``overwrite``:
    a file is replaced by one atomic rename; a folder (a zarr store), which no rename replaces, is
    moved aside, the new one moved in and the old one removed, Ctrl-C and SIGTERM held back meanwhile, so
    an interrupt leaves the old or the new one at ``path``, never neither, and nothing beside it (only
    SIGKILL there can leave the old one as ``.<name>.old-*``, or nothing at ``path``).
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise already_exists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield temporary
        if not (path.exists() or path.is_symlink()):
            os.replace(temporary, path)
            return
        if not overwrite:
            raise already_exists(path)
        if not temporary.is_dir() and not (path.is_dir() and not path.is_symlink()):
            os.replace(temporary, path)  # a file over a file (or a link): atomic
            return
        previous = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        with uninterrupted():  # an interrupt held back is delivered (SIGTERM's default: the process ends) after all
            os.replace(path, previous)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(previous, path)
                raise
            remove_path(previous)
    except BaseException:
        remove_path(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace the text file ``path`` (UTF-8) whole: written beside it, then renamed over it, so a
    run killed meanwhile leaves the old file or the new one, never half of one."""
    with atomic_path(path, overwrite=True) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _without_source_codecs(dataset: xr.Dataset) -> xr.Dataset:
    """Keep CF time encoding (units, calendar, dtype) but drop the codecs and chunking a dataset
    inherited from the file it was read from (zarr 2 codecs cannot be written to zarr 3, etc.)."""
    dataset = dataset.copy()
    for name in dataset.variables:
        dataset[name].encoding = {k: v for k, v in dataset[name].encoding.items() if k in ("units", "calendar", "dtype")}
    return dataset


def write_dataset(dataset: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a dataset to netCDF or zarr (by suffix), atomically. An interrupt waits for a zarr write
    to finish (:func:`uninterrupted`): give a dataset in memory (``.load()``), not a lazy one whose
    reading would be held up with it.

    Zarr stores are chunked one time step per chunk along ``time`` when it exists.
    """
    path = Path(path)
    fmt = output_format(path)
    dataset = _without_source_codecs(dataset)
    with atomic_path(path, overwrite=overwrite) as temporary:
        if fmt == "zarr":
            encoding = {}
            for name, variable in dataset.data_vars.items():
                chunks = tuple(1 if dim == "time" else size for dim, size in variable.sizes.items())
                encoding[name] = {"chunks": chunks}
            with uninterrupted():
                dataset.to_zarr(temporary, mode="w", encoding=encoding, consolidated=False)
                consolidate(temporary)
        else:
            dataset.to_netcdf(temporary, engine="h5netcdf")
    return path


def create_store(path: str | os.PathLike, coords: dict, variables: dict[str, tuple], attrs: dict | None = None,
                 chunked_dims: tuple[str, ...] = ("time", "trajectory", "realization"),
                 chunks: dict[str, tuple[int, ...]] | None = None) -> None:
    """Create an empty zarr store, to be filled region by region with :func:`write_region`.

    ``coords`` maps every dimension (and any other coordinate) to its values (a DataArray keeps its
    attributes; xarray writes them, so CF time encoding applies). ``variables`` maps each data
    variable to ``(dims, dtype, attrs)``; arrays are created empty (NaN), one entry of each
    ``chunked_dims`` per chunk, or with the chunk shape ``chunks[name]`` where given. Memory stays
    bounded whatever the store's size. Writers of distinct regions (processes) must not share a chunk.
    """
    skeleton = _without_source_codecs(xr.Dataset(coords=coords, attrs=attrs or {}))
    with uninterrupted():
        skeleton.to_zarr(path, mode="w", consolidated=False)
    group = zarr.open_group(path, mode="a")
    sizes = {name: np.size(getattr(value, "values", value)) for name, value in coords.items()}
    for name, (dims, dtype, variable_attrs) in variables.items():
        shape = tuple(sizes[d] for d in dims)
        chunk = (chunks or {}).get(name) or tuple(1 if d in chunked_dims else n for d, n in zip(dims, shape))
        group.create_array(name, shape=shape, chunks=chunk, dtype=dtype, dimension_names=list(dims),
                           attributes=dict(variable_attrs), fill_value=np.nan)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM held back while the block runs, then delivered to the handlers of
    before (a KeyboardInterrupt, the command line's exit 143, or the default action).

    For a write into a zarr store: zarr-python 3 writes the chunks in a background thread, and an
    interrupt that stops the caller's wait leaves that thread writing — into a temporary the caller
    is removing meanwhile (recreating it) — and prints its cancelled tasks' errors. Held back, the
    interrupt takes effect once the write is complete (one batch of chunks). Only the main thread
    can install signal handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    previous = {number: handler for number, handler in previous.items() if handler is not None}  # set outside Python: left alone
    for number in previous:
        signal.signal(number, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        blocking = hasattr(signal, "pthread_sigmask")  # a signal arriving while the handlers are put back waits for them
        if blocking:
            signal.pthread_sigmask(signal.SIG_BLOCK, list(previous))
        try:
            for number, handler in previous.items():
                signal.signal(number, handler)
        finally:
            if blocking:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, list(previous))
        if received:
            signal.raise_signal(received[0])


def write_region(path: str | os.PathLike, arrays: dict[str, np.ndarray], index: tuple) -> None:
    """Write ``arrays[name]`` into ``store[name][index]`` for each name (interrupts held back until
    it is written: :func:`uninterrupted`)."""
    with quiet_zarr(), uninterrupted():
        group = zarr.open_group(path, mode="r+")  # never created again: a removed temporary stays removed
        for name, values in arrays.items():
            group[name][index] = values


def consolidate(path: str | os.PathLike) -> None:
    """Consolidate a finished zarr store's metadata (one read for all of it; ``xr.open_zarr`` warns on
    a store without). zarr-python 3 notes that consolidation is not yet part of format 3's spec;
    it is what xarray reads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's warnings that tell a user nothing: a store without consolidated metadata (fine), and a file
    of latentda's own inside a store (``latentda_*``, e.g. a filter's run state in its ``.partial`` store, which zarr
    lists as "not recognized as a component of a Zarr hierarchy")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        warnings.filterwarnings("ignore", message=r"Object at latentda_\S* is not recognized as a component")
        yield
