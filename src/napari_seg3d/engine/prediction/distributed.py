"""Prediction on a Dask distributed cluster (``napari-seg3d predict ... --scheduler ADDRESS``).

Many files: one task per file; the worker runs the local engine on it (the same code as
:func:`.batch.iter_predict_files`) and writes the output itself, atomically. One large volume
(a single input that :func:`.blocks.plan_blocks` cuts into more than one block): one task per
block; the worker reads only that block and its halo and sends the block's labels (and
probabilities) back; this process writes them block by block. Either way the outputs are the
ones the single-machine run writes, with the same names.

The model file, the inputs and the output folder must be on a file system that every worker and
this process see under the same path (paths are made absolute here). Each worker loads the model
file once (cached by path, modification time and size). Needs ``distributed``
(``pip install "napari-seg3d[cluster]"``); it is imported only when used.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import CancelledError
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..config import PredictConfig, predict_config
from ..errors import ModelFileError, OutputError, Seg3DError, writable_folder
from ..generators import run_to_end
from ..io import read_volume, split_path
from .batch import (
    FILE_DEFAULTS,
    FileOutputs,
    FileProgress,
    FileResult,
    failure_reason,
    iter_predict_file,
    output_paths,
    record_done,
)
from .blocks import plan_blocks

log = logging.getLogger(__name__)

#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT_S = 10.0

__all__ = ["CONNECT_TIMEOUT_S", "iter_predict_files_distributed", "predict_files_distributed"]


def iter_predict_files_distributed(
    model: str | os.PathLike, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
    scheduler: str, config: PredictConfig | None = None, *, fmt: str = "tif",
    overwrite: bool = False, **overrides: Any,
) -> Generator[FileProgress | FileResult, None, list[FileResult]]:
    """:func:`.batch.iter_predict_files` on the workers of the Dask scheduler at ``scheduler``.

    Yields a :class:`FileResult` per file as files complete (``index`` is the position in
    ``inputs``); for a single input cut into several blocks, a :class:`FileProgress` per block
    done (``windows_done`` / ``windows_total`` count blocks), then its result. Returns the
    results in input order. A file that fails on a worker (also a worker that dies) is a
    ``"failed"`` result and leaves no output.

    Args:
        model: The model file, readable by every worker under this (absolute) path.
        inputs, out_dir, fmt, overwrite: as for :func:`.batch.iter_predict_files`; inputs and
            the output folder on a shared file system.
        scheduler: The scheduler's address, e.g. ``tcp://host:8786``.
        config: How to predict (default :data:`.batch.FILE_DEFAULTS`), sent as it is to the
            workers (each resolves ``device="auto"`` for itself); with a single input, its
            ``block_shape`` is also the unit of work.
        **overrides: Fields of :class:`.PredictConfig` replacing those of ``config``.

    Raises:
        Seg3DError: ``distributed`` is not installed, the scheduler cannot be reached, or the
            workers run another napari-seg3d.
        ModelFileError: The model file cannot be loaded here.
    """
    from ..model_file import load_model

    config = predict_config(FILE_DEFAULTS if config is None else config, **overrides)
    client_mod = _distributed()
    model_path = Path(model).expanduser().resolve()
    local_model = load_model(model_path)  # a clear error here rather than on every worker
    local_model.check_config(config)
    specs = [str(spec) for spec in inputs]
    out_dir = writable_folder(out_dir)
    outputs = {"probabilities": config.probabilities, "uncertainty": config.uncertainty}
    outs = output_paths(out_dir, specs, fmt, model_file=model_path, **outputs)
    client = _connect(client_mod, scheduler)
    try:
        _check_workers(client)
        if len(specs) == 1:
            blocks = _blocks_of(local_model, specs[0], config)
            if blocks is not None and len(blocks) > 1:
                return (yield from record_done(
                    _predict_one_large(client, model_path, local_model, specs[0], outs[0],
                                       len(blocks), overwrite, config), out_dir, specs, **outputs))
        return (yield from record_done(_predict_many(client, model_path, specs, outs, overwrite,
                                                    config), out_dir, specs, **outputs))
    finally:
        client.close()


def _predict_one_large(client, model_path, model, spec, out, n_blocks, overwrite, config):
    result = yield from _predict_large(client, model_path, model, spec, out, n_blocks, overwrite,
                                       config)
    yield result
    return [result]


def predict_files_distributed(model, inputs, out_dir, scheduler, config=None,
                              **kwargs) -> list[FileResult]:
    """:func:`iter_predict_files_distributed` run to the end; returns one result per input."""
    return run_to_end(iter_predict_files_distributed(model, inputs, out_dir, scheduler, config,
                                                     **kwargs))


# -- the client side ----------------------------------------------------------------------------

def _distributed():
    try:
        import distributed
    except ImportError as e:
        raise Seg3DError("Predicting on a cluster (--scheduler) needs Dask distributed: "
                         'pip install "napari-seg3d[cluster]".') from e
    return distributed


def _connect(distributed, address: str):
    from distributed.comm import parse_address, resolve_address
    from distributed.security import Security

    def unreachable(e: BaseException) -> Seg3DError:
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return Seg3DError(f"Cannot reach the Dask scheduler at {address!r} ({cause}). Start it "
                          "(dask scheduler) and give its address, e.g. tcp://host:8786.")

    try:  # a malformed address or unknown host fails here, at once (in Client, it leaves a
        resolve_address(address)  # half-made client that hangs the exit)
        scheme = parse_address(address)[0]
    except Exception as e:  # ValueError, socket.gaierror, ...
        raise unreachable(e) from e
    if scheme in ("tls", "wss") and Security().get_connection_args("client")["ssl_context"] is None:
        raise Seg3DError(f"The Dask scheduler at {address!r} uses TLS, and no certificate is set: "
                         "configure distributed.comm.tls in Dask's configuration (see Dask's "
                         "security documentation).")
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except Exception as e:  # OSError, TimeoutError, ...
        raise unreachable(e) from e


def _check_workers(client) -> None:
    """Every worker present runs this napari-seg3d (workers that join later are not checked)."""
    try:
        versions = client.run(_worker_version)
    except Exception as e:  # e.g. ModuleNotFoundError while unpickling on a worker
        raise Seg3DError(f"The Dask workers cannot run napari-seg3d ({failure_reason(e)}). Install "
                         f"napari-seg3d {__version__} on every worker.") from e
    other = {addr: v for addr, v in versions.items() if v != __version__}
    if other:
        addr, version = next(iter(other.items()))
        raise Seg3DError(f"The Dask worker {addr} runs napari-seg3d {version}, this is "
                         f"{__version__}: install the same version on every worker.")
    if not versions:
        log.warning("The Dask scheduler has no worker yet; waiting for workers to join.")


def _shared(spec: str) -> str:
    """``spec`` with its file made absolute (workers do not share this working directory)."""
    path, key = split_path(spec)
    path = path.expanduser().resolve()
    return f"{path}:{key}" if key else str(path)


def _skipped(index: int, total: int, spec: str, out: Path, overwrite: bool) -> FileResult | None:
    if out.exists() and not overwrite:
        return FileResult(index, total, spec, out, "skipped", "output exists")
    return None


def _failed(index: int, total: int, spec: str, e: BaseException) -> FileResult:
    text = failure_reason(e)
    if type(e).__name__ == "KilledWorker":
        text = "the worker predicting it died (out of memory?); see the worker logs"
    elif isinstance(e, CancelledError):  # e.g. "... cancelled for reason: scheduler-connection-lost."
        why = text.rpartition("reason: ")[2].rstrip(".") if "reason: " in text else "cancelled"
        text = f"the Dask scheduler dropped the work ({why}); is the scheduler still running?"
    log.info("%s failed: %s", spec, text)  # the result says it
    return FileResult(index, total, spec, None, "failed", text)


def _predict_many(client, model_path: Path, specs: list[str], outs: list[Path], overwrite: bool,
                  config: PredictConfig) -> Generator[FileResult, None, list[FileResult]]:
    """One task per file; results as they come."""
    from distributed import as_completed

    total = len(specs)
    results: dict[int, FileResult] = {}
    futures = {}
    first: dict[Path, int] = {}
    for index, (spec, out) in enumerate(zip(specs, outs)):
        skipped = _skipped(index, total, spec, out, overwrite)
        if first.setdefault(out, index) < index:  # an input named twice is predicted once
            skipped = FileResult(index, total, spec, None, "skipped",
                                 f"named twice: the same file as {specs[first[out]]}")
        if skipped is not None:
            results[index] = skipped
            continue
        future = client.submit(_predict_file_task, str(model_path), _shared(spec),
                               str(out.expanduser().resolve()), index, total, overwrite, config,
                               key=f"napari-seg3d-file-{index}-{os.urandom(4).hex()}",
                               pure=False)
        futures[future] = index
    try:
        yield from list(results.values())
        for future in as_completed(list(futures), loop=client.loop):
            index = futures.pop(future)
            try:
                result = replace(future.result(), input=specs[index])
                if result.output is not None:
                    result = replace(result, output=outs[index])
            except Exception as e:  # noqa: BLE001 - any error of a worker fails its file only
                result = _failed(index, total, specs[index], e)
            future.release()
            results[index] = result
            yield result
    finally:
        client.cancel(list(futures))
    return [results[i] for i in sorted(results)]


class _BlockFailed(Exception):
    pass


def _predict_large(client, model_path: Path, model, spec: str, out: Path, n_blocks: int,
                   overwrite: bool, config: PredictConfig,
                   ) -> Generator[FileProgress, None, FileResult]:
    """One task per block; the blocks are written here as they come, published at the end.
    Only a few blocks per worker thread are in flight, so finished blocks never pile up in the
    workers' memory while this process writes."""
    from distributed import as_completed

    from .sliding_window import RegionDone

    t0 = time.perf_counter()
    skipped = _skipped(0, 1, spec, out, overwrite)
    if skipped is not None:
        return skipped
    shared, todo, futures = _shared(spec), iter(range(n_blocks)), []

    def submit(n: int) -> None:
        for i in itertools.islice(todo, n):
            futures.append(client.submit(
                _predict_block_task, str(model_path), shared, i, config,
                key=f"napari-seg3d-block-{i}-{os.urandom(4).hex()}", pure=False))
            running.add(futures[-1])

    running = as_completed([], loop=client.loop)
    try:
        with read_volume(spec, lazy=True) as vol:
            shape, voxel = tuple(vol.data.shape[-3:]), vol.voxel_size or model.voxel_size
        submit(_blocks_in_flight(client))
        with contextlib.ExitStack() as stack:
            outputs = FileOutputs(out, shape, voxel, config.probabilities, config.uncertainty,
                                  stack)
            for done, future in enumerate(running, 1):
                try:
                    index, core, labels, probs = future.result()
                except Exception as e:
                    raise _BlockFailed() from e
                future.release()
                submit(_blocks_in_flight(client) - running.count())
                outputs.add(RegionDone(core, labels, probs, done, n_blocks, block=index))
                yield FileProgress(0, 1, spec, done, n_blocks)
            outputs.commit()
    except _BlockFailed as e:
        return _failed(0, 1, spec, e.__cause__ or e)
    except (Seg3DError, ValueError, OSError) as e:
        return _failed(0, 1, spec, e)
    finally:
        client.cancel(futures)
    return FileResult(0, 1, spec, out, "done", seconds=time.perf_counter() - t0)


def _blocks_in_flight(client) -> int:
    """Two blocks per worker thread (at least 4): one computing, one waiting to be written.
    Asked each time, as workers may join or leave."""
    return max(4, 2 * sum(client.nthreads().values()))


def _blocks_of(model, spec: str, config: PredictConfig) -> list | None:
    """The block plan of a single input, or None when it cannot be read here or is not an input
    of this model (its task then reports why, as the local run does)."""
    try:
        with read_volume(spec, lazy=True) as vol:
            model.check_image(vol.data)
            shape = tuple(vol.data.shape[-3:])
        return plan_blocks(shape, model.prediction_window(shape, config), config.overlap,
                           config.block_shape)
    except (Seg3DError, ValueError, OSError, MemoryError):
        return None


# -- the worker side ----------------------------------------------------------------------------

_LOCK = threading.Lock()
_MODELS_KEPT = 2  # model files a worker keeps loaded
#: per worker (its id; None outside a worker): {"models": {path: (stamp, model)}, "loads": {}}
_STATE: dict[str | None, dict[str, dict]] = {}


def _worker_id(dask_worker=None) -> str | None:
    if dask_worker is None:
        try:
            from distributed import get_worker

            dask_worker = get_worker()
        except (ImportError, ValueError):
            return None
    return str(dask_worker.id)


def _worker_model(path: str):
    """The model file at ``path``, loaded once per worker (again only when the file changes)."""
    from ..model_file import load_model

    file = Path(path)
    if not file.is_file():
        raise ModelFileError(f"A worker cannot find the model file {path}: the model, inputs "
                             "and output folder must be on a file system every worker sees.")
    st = file.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    with _LOCK:
        state = _STATE.setdefault(_worker_id(), {"models": {}, "loads": {}})
        cached = state["models"].get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        model = load_model(file)
        models = state["models"]
        models.pop(path, None)  # an older version of the file
        while len(models) >= _MODELS_KEPT:  # the least recently loaded
            models.pop(next(iter(models)))
        models[path] = (stamp, model)
        state["loads"][path] = state["loads"].get(path, 0) + 1
        return model


def _loads(dask_worker=None) -> dict[str, int]:
    """How many times this worker loaded each model file (``client.run(_loads)``)."""
    with _LOCK:
        return dict(_STATE.get(_worker_id(dask_worker), {}).get("loads", {}))


def _worker_version() -> str:
    return __version__


def _predict_file_task(model_path: str, spec: str, out: str, index: int, total: int,
                       overwrite: bool, config: PredictConfig) -> FileResult:
    """Predict one file on a worker, writing its outputs; returns its result."""
    out_path = Path(out)
    if not out_path.parent.is_dir():  # never write a worker's own disk by mistake
        raise OutputError(f"A worker cannot find the output folder {out_path.parent}: it must be "
                          "on a file system every worker sees.")
    model = _worker_model(model_path)
    return run_to_end(iter_predict_file(model, spec, out_path, config, index=index, total=total,
                                        overwrite=overwrite))


def _predict_block_task(model_path: str, spec: str, index: int, config: PredictConfig,
                        ) -> tuple[int, tuple[slice, ...], np.ndarray, Any]:
    """Predict block ``index`` of ``spec`` on a worker: ``(index, core, labels, probabilities)``
    (probabilities None unless ``config`` asks for probabilities or uncertainty)."""
    model = _worker_model(model_path)
    probabilities = config.needs_probabilities
    with read_volume(spec, lazy=True) as vol:
        regions = list(model.iter_predict(vol.data, config, blocks=[index]))
    first, last = regions[0].slices, regions[-1].slices
    core = (slice(first[0].start, last[0].stop), *first[1:])
    labels = np.concatenate([r.labels for r in regions])
    probs = np.concatenate([r.probabilities for r in regions], axis=1) if probabilities else None
    return index, core, labels, probs
