"""Export a model as a BioImage Model Zoo package (bioimage.io model spec 0.5).

The zip holds ``rdf.yaml``; ``weights.pt``, the ``pytorch_state_dict`` of
:class:`.network.ZooNetwork` (the network with its softmax or sigmoid, so every consumer gets
class probabilities whatever post-processing it implements); ``weights_torchscript.pt``, a
TorchScript trace of it that needs no napari-seg3d; ``test_input.npy`` and
``test_output.npy``; ``README.md``; a cover image; and ``LICENSE-stardist.txt`` when the test
input is a crop of the nuclei sample. It is written atomically (a temporary file, then a
rename). Nothing reaches the network.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from ..errors import ModelFileError, OutputError, writable_folder
from ..io._temps import remove_stale_temps, temp_path
from . import collecting_open_files, quiet_bioimageio, require_bioimageio
from ._cover import write_cover
from ._sample import from_sample, sample_license
from ._tensors import crop_input, expected_output, synthetic_input
from .network import zoo_network

log = logging.getLogger(__name__)

SYNTHETIC = ("No image was given: the test input is synthetic (smooth random blobs spanning the "
             "model's stored intensity range), not data.")


@dataclass(frozen=True)
class ExportDetails:
    """What the package says about itself; empty fields get defaults from the model."""

    name: str = ""
    description: str = ""
    authors: tuple[str, ...] = ()
    image_name: str = ""  # the image the test input is cropped from, for the README


def export_package(model, out: str | os.PathLike, *, image=None,
                   details: ExportDetails = ExportDetails()) -> Path:
    """Write ``model`` as a bioimage.io model package (a zip) at ``out``.

    Args:
        model: a ``SegmentationModel`` (not one loaded from another tool's package).
        out: the zip to write; replaced if it exists.
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array the test input is cropped from (its
            centre, the size of the model's window); None: a synthetic test input
            (:data:`SYNTHETIC`).
        details: name, description, authors.

    Returns:
        The path written.

    Raises:
        ModelFileError: the bioimage.io packages are missing, or the model cannot be exported.
        OutputError: ``out`` cannot be written.
    """
    require_bioimageio("Exporting to the BioImage Model Zoo")
    check_exportable(model)
    out = Path(out).expanduser()
    writable_folder(out.parent)
    raw = synthetic_input(model) if image is None else crop_input(model, image)
    on_sample = from_sample(model, image)
    if image is None:
        origin = SYNTHETIC
    else:
        where = f"'{details.image_name}'" if details.image_name else "the image given"
        origin = (f"`test_input.npy` is the centre crop {raw.shape[2:]} of {where}"
                  + (", napari-seg3d's nuclei sample (StarDist)." if on_sample else "."))
    quiet_bioimageio()
    with collecting_open_files(), tempfile.TemporaryDirectory(prefix="seg3d-export-") as tmp:
        folder = Path(tmp)
        files = _write_files(folder, model, raw, on_sample)
        descr = _describe(model, folder, files, details, origin, on_sample)
        _save_zip(descr, out)
    log.info("Exported the model to %s", out)
    return out


def check_exportable(model) -> None:
    """Raise a sentence for a model that cannot be exported: one from another tool's package."""
    if getattr(model, "package_source", None):
        raise ModelFileError(f"This model was loaded from the bioimage.io package "
                             f"{model.package_source}; share that package itself.")


def _write_files(folder: Path, model, raw: np.ndarray, on_sample: bool) -> dict[str, Path]:
    """Weights, TorchScript copy, test tensors (and the sample's licence) in ``folder``."""
    network = zoo_network(model)
    expected = expected_output(network, model, raw)
    files = {"weights": folder / "weights.pt", "torchscript": folder / "weights_torchscript.pt",
             "test_input": folder / "test_input.npy", "test_output": folder / "test_output.npy"}
    torch.save(network.state_dict(), files["weights"])
    example = torch.from_numpy(model.normalization.apply(raw[0])[None])
    with warnings.catch_warnings():
        # the trace holds at every size the package declares (no padding, no thin axis); and
        # TorchScript, deprecated in PyTorch, is the format deepImageJ and bioimage.io read
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        traced = torch.jit.trace(network, example, check_trace=False)
        traced.save(str(files["torchscript"]))
    np.save(files["test_input"], raw)
    np.save(files["test_output"], expected)
    files["sample_input"], files["sample_output"] = folder / "sample_input.tif", \
        folder / "sample_output.tif"
    tifffile.imwrite(files["sample_input"], raw[0, 0] if raw.shape[1] == 1 else raw[0])
    tifffile.imwrite(files["sample_output"], expected[0])
    files["cover"] = write_cover(folder / "cover.png", raw, expected)
    if on_sample:
        files["license"] = folder / "LICENSE-stardist.txt"
        shutil.copyfile(sample_license(), files["license"])
    return files


def _describe(model, folder: Path, files: dict[str, Path], details: ExportDetails,
              origin: str, on_sample: bool):
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5

    from . import _describe as d
    from ._readme import readme

    name = package_name(details.name or f"{model.model_config.architecture} "
                        f"{' '.join(model.class_names)} (napari-seg3d)")
    description = details.description or default_description(model)
    files["readme"] = folder / "README.md"
    files["readme"].write_text(readme(model, name=name, description=description,
                                      test_input=origin, on_sample=on_sample), encoding="utf-8")
    authors = [a.replace("/", "-") for a in details.authors if a.strip()] or [_login()]
    attachments = [v0_5.FileDescr(source=files["license"])] if on_sample else []
    with ValidationContext(root=folder, perform_io_checks=True):  # local files only
        return v0_5.ModelDescr(
            name=name, description=description,
            authors=[v0_5.Author(name=a) for a in authors],
            cite=d.citations(on_sample), license="BSD-3-Clause", tags=d.tags(model),
            documentation=v0_5.FileDescr(source=files["readme"]), attachments=attachments,
            covers=[v0_5.FileDescr(source=files["cover"])],
            inputs=[d.input_descr(model, files["test_input"], files["sample_input"])],
            outputs=[d.output_descr(model, files["test_output"], files["sample_output"])],
            weights=d.weights_descr(model, files["weights"], files["torchscript"]),
            config=v0_5.Config(**{d.CONFIG_KEY: d.our_config(model)}))


def _save_zip(descr, out: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    remove_stale_temps(out)
    tmp = temp_path(out).with_suffix(".zip")
    try:
        save_bioimageio_package(descr, output_path=tmp)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Cannot write the package to {out} ({e.strerror or e}). Choose a "
                          "folder you can write to, with enough free space.") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def package_name(text: str) -> str:
    """``text`` with only the characters bioimage.io allows in a name (letters, digits, space,
    ``_+-()``), 5 to 64 characters."""
    name = re.sub(r"[^A-Za-z0-9_+\- ()]+", " ", text)
    name = re.sub(r"\s+", " ", name).strip()[:64].strip()
    return name if len(name) >= 5 else f"{name} napari-seg3d model".strip()


def default_description(model) -> str:
    dims = "2D network applied along z, y and x (2.5D)" if model.dims == 2 else "3D network"
    return (f"Semantic segmentation of 3D images into {len(model.class_values)} classes "
            f"({', '.join(model.class_names)}) by a {model.model_config.architecture} "
            f"{dims}, trained with napari-seg3d on sparse brush strokes.")


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name (some containers)
        return "napari-seg3d user"
