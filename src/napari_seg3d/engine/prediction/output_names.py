"""The names of batch outputs, stable across runs, and the record of what was written where.

Each input ``x.tif`` is predicted into ``<out>/x_labels.<fmt>`` (see :func:`.io.output_path`).
Inputs of the same name from different folders (``a/x.tif``, ``b/x.tif``) each get the name of
their folder, ``x_labels_a.tif``, ``x_labels_b.tif``, or of as many folders as tell them apart
(``p/a/x.tif``, ``q/a/x.tif``: ``x_labels_p_a.tif``, ``x_labels_q_a.tif``; the same folders: a
short hash of the path), whatever their order.

Every output folder keeps a hidden record, :data:`MANIFEST`, of the outputs written into it and
the input each came from. With it an input keeps its output name in later runs (``b/x.tif`` run
alone still finds ``x_labels_b.tif``, and never takes ``a/x.tif``'s ``x_labels.tif`` for its
own), and a folder of inputs that is also the output folder is expanded without the outputs
written there (:func:`written_here`). Losing the record loses nothing but these two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..io import HDF5_SUFFIXES, output_path, split_path
from ..io._temps import commit_temp, fresh_temp
from ..io._volume import _safe_name, stem_of, suffix_of
from ..io.no_overwrite import ReadFiles, file_of, refuse_writing_over, resolved

log = logging.getLogger(__name__)

MANIFEST = ".napari-seg3d-outputs.json"
_FORMAT = "napari-seg3d outputs"


def beside(out: Path, what: str, key: str = "") -> str:
    """``<stem>_<what>.<ext>`` for the labels output ``<stem>_labels.<ext>``; ``key`` names the
    dataset of an HDF5 file."""
    head, _, tail = out.name.rpartition("_labels")
    if tail.lower().endswith(".ome.zarr"):  # the companions of an OME-Zarr are plain zarr
        tail = tail[:-len(".ome.zarr")] + ".zarr"
    path = str(out.with_name(f"{head}_{what}{tail}"))
    return f"{path}:{key}" if key and out.suffix.lower() in HDF5_SUFFIXES else path


def output_files(out: Path, probabilities: bool = False, uncertainty: bool = False,
                 ) -> list[tuple[str, str]]:
    """``(role, spec)`` of each file a prediction into the labels output ``out`` writes."""
    files = [("labels", str(out))]
    if probabilities:
        files.append(("probabilities", beside(out, "probabilities")))
    if uncertainty:
        files.append(("uncertainty", beside(out, "uncertainty", "/uncertainty")))
    return files


def plan_outputs(out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], fmt: str, *,
                 probabilities: bool = False, uncertainty: bool = False,
                 model_file: str | os.PathLike | None = None) -> list[Path]:
    """The labels output of each input in ``out_dir`` (the same path for an input named twice).

    Raises:
        OutputError: an output (or its probabilities or uncertainty) would be written over an
            input, or over ``model_file``.
        VolumeError: ``fmt`` is not a known format.
    """
    out_dir = Path(out_dir)
    ids = [_input_id(out_dir, spec) for spec in inputs]
    first: dict[str, int] = {}
    for index, key in enumerate(ids):
        first.setdefault(key, index)
    cands = {key: _candidates(output_path(out_dir, inputs[i], fmt), inputs[i], key)
             for key, i in first.items()}
    chosen = _assign(cands, read_manifest(out_dir), probabilities, uncertainty)
    outs = [chosen[key] for key in ids]
    _refuse_over_inputs(inputs, outs, first.values(), probabilities, uncertainty, model_file)
    return outs


def _assign(cands: dict[str, list[Path]], records: dict[str, dict], probabilities: bool,
            uncertainty: bool) -> dict[str, Path]:
    """The output of each input (by its id) among its candidates: the one recorded for it, else
    the first that tells it apart from the inputs of the same name and that no other input
    claims, in this run or in the record."""
    owner = {name: entry.get("input") for name, entry in records.items()}
    claimed: dict[str, str] = {}
    chosen: dict[str, Path] = {}
    for key, names in cands.items():  # an input keeps the name recorded for it
        recorded = [c for c in names
                    if owner.get(c.name) == key and records[c.name].get("role") == "labels"]
        if recorded:
            chosen[key] = recorded[0]
            claimed.update(dict.fromkeys(_names(recorded[0], probabilities, uncertainty), key))
    groups: dict[str, list[str]] = {}
    for key, names in cands.items():
        groups.setdefault(names[0].name, []).append(key)
    for key in cands:
        if key in chosen:
            continue
        others = [cands[k] for k in groups[cands[key][0].name] if k != key]
        for candidate in _numbered(cands[key][_distinct_depth(cands[key], others):]):
            names = _names(candidate, probabilities, uncertainty)
            if all(claimed.get(n, key) == key and owner.get(n, key) == key for n in names):
                break
        chosen[key] = candidate
        claimed.update(dict.fromkeys(names, key))
    return chosen


def _refuse_over_inputs(inputs, outs, distinct, probabilities, uncertainty, model_file) -> None:
    read = ReadFiles({f"the input {spec}": spec for spec in inputs})
    if model_file is not None:
        read.add(f"the model file {model_file}", model_file)
    written = ((f"the output {split_path(spec)[0].name} of {inputs[i]}", spec, True)
               for i in distinct for _, spec in output_files(outs[i], probabilities, uncertainty))
    refuse_writing_over(read, written, "choose another output folder")


def _names(out: Path, probabilities: bool, uncertainty: bool) -> list[str]:
    return [split_path(spec)[0].name for _, spec in output_files(out, probabilities, uncertainty)]


def _candidates(plain: Path, spec, key: str) -> list[Path]:
    """``x_labels.tif``, then ``x_labels_<folder>.tif``, ``x_labels_<above>_<folder>.tif`` ...
    up the input's folders, then ``x_labels_<hash of the input>.tif``."""
    folders = [_safe_name(p.name) for p in Path(os.path.abspath(file_of(spec))).parents]
    suffixes = [""]
    for depth in range(1, len(folders) + 1):
        suffix = "_".join(filter(None, reversed(folders[:depth])))
        if suffix and suffix not in suffixes:
            suffixes.append(suffix)
    suffixes.append(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8])
    return [plain.with_name(f"{stem_of(plain)}_{s}{suffix_of(plain)}") if s else plain
            for s in suffixes]


def _distinct_depth(mine: list[Path], others: list[list[Path]]) -> int:
    """The first candidate of ``mine`` that no other input of the same name has at the same
    place: 0 when there is no other, so each gets the fewest folders that tell it apart."""
    if not others:
        return 0
    for depth in range(1, len(mine)):
        if all(depth >= len(o) or o[depth].name != mine[depth].name for o in others):
            return depth
    return len(mine) - 1


def _numbered(candidates: list[Path]) -> Iterator[Path]:
    """The candidates, then the last one numbered ``_2``, ``_3`` ... (never exhausted)."""
    yield from candidates
    last, n = candidates[-1], 2
    while True:
        yield last.with_name(f"{stem_of(last)}_{n}{suffix_of(last)}")
        n += 1


def _input_id(out_dir: Path, spec) -> str:
    """An input as the record names it: its resolved file relative to the output folder (so
    moving both together keeps the record true), with its HDF5/zarr key."""
    path = resolved(file_of(spec))
    try:
        text = os.path.relpath(path, resolved(out_dir))
    except ValueError:  # another drive
        text = str(path)
    key = split_path(spec)[1]
    return f"{Path(text).as_posix()}:{key}" if key else Path(text).as_posix()


# --- the record -------------------------------------------------------------------------------

def read_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """``{output name: {"input": ..., "role": ..., "size": ..., "mtime_ns": ...}}`` as recorded
    in ``folder`` (empty when there is no readable record)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("Ignoring the record of outputs %s (%s).", path, e)
        return {}
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, dict):
        return {}
    return {str(k): v for k, v in outputs.items() if isinstance(v, dict)}


def record_outputs(folder: str | os.PathLike, spec, files: Sequence[tuple[str, str]]) -> None:
    """Record that the ``(role, spec)`` ``files`` in ``folder`` were just written from the input
    ``spec``. A record that cannot be written is only logged: the outputs are complete."""
    folder = Path(folder)
    entries = read_manifest(folder)
    key = _input_id(folder, spec)
    for role, written in files:
        path = split_path(written)[0]
        entries[path.name] = {"input": key, "role": role, **_stamp(path)}
    target = folder / MANIFEST
    tmp = fresh_temp(target)
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump({"format": _FORMAT, "version": 1, "outputs": entries}, fh, indent=1)
        commit_temp(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning("Could not record the outputs in %s (%s); they are complete.", target,
                    e.strerror or e)


def written_here(folder: str | os.PathLike) -> set[str]:
    """Names of the outputs this tool wrote in ``folder`` that are unchanged since (a file
    edited or replaced since counts as the user's)."""
    folder = Path(folder)
    return {name for name, entry in read_manifest(folder).items()
            if (folder / name).exists()
            and all(entry.get(k) == v for k, v in _stamp(folder / name).items())}


def _stamp(path: Path) -> dict[str, int]:
    """Size and modification time of a file (nothing for a zarr store: a folder)."""
    try:
        st = path.stat()
    except OSError:
        return {}
    return {} if path.is_dir() else {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
