"""BioImage Model Zoo (bioimage.io) packages: export a model as one, load one as a model.

:func:`.export.export_package` writes a model as a bioimage.io model package (spec 0.5):
``rdf.yaml``, ``pytorch_state_dict`` weights whose architecture is :class:`.network.ZooNetwork`
of this package, a TorchScript copy, test tensors, a README. :func:`.load.load_package` reads
a package back: ours as the :class:`~..model_file.SegmentationModel` it was, another 3D
segmentation model whose axes and pre-processing fit as a :class:`.foreign.PackageModel`.
``model_file.load_model`` calls it for any path :func:`is_package` recognises, so every place
that loads a model file (``predict``, the Predict, Batch and Train widgets) takes packages.

Nothing here reaches the network: descriptions are read with bioimage.io's I/O checks off, and
the packages we write hold no URL. The bioimage.io libraries are imported only when needed, so
napari-seg3d works without them (the extra ``napari-seg3d[bioimageio]`` installs them).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import warnings
import zipfile
from pathlib import Path

from ..errors import ModelFileError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
INSTALL = 'pip install "napari-seg3d[bioimageio]"'


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip file with ``rdf.yaml`` (or
    ``bioimageio.yaml``) at its top, such a YAML file itself, or a folder holding one. A model
    file of ours (a zip archive too, written by ``torch.save``) is not one."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in RDF_NAMES)
    if path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml"):
        return True
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(name in z.NameToInfo for name in RDF_NAMES)
    except (OSError, zipfile.BadZipFile):
        return False


def require_bioimageio(what: str) -> None:
    """Raise a :class:`ModelFileError` with the install command unless bioimageio.core and
    bioimageio.spec import."""
    try:
        import bioimageio.core
        import bioimageio.spec  # noqa: F401
    except ImportError as e:
        raise ModelFileError(f"{what} needs the bioimage.io packages, which are not installed "
                             f"({e.name}): {INSTALL}") from None


def trust_code() -> bool:
    """Whether the user allows loading packages whose network is Python code (an architecture
    file inside the package, or TorchScript): the environment variable
    ``NAPARI_SEG3D_TRUST_CODE=1``."""
    return os.environ.get("NAPARI_SEG3D_TRUST_CODE", "").strip().lower() in ("1", "true", "yes")


def quiet_bioimageio() -> None:
    """Turn bioimage.io's own log lines (loguru, to stderr) off for this process, unless
    napari-seg3d logs at DEBUG level (``--debug``): a user of napari-seg3d sees our sentences,
    not the library's progress messages."""
    from loguru import logger

    if not logging.getLogger("napari_seg3d").isEnabledFor(logging.DEBUG):
        logger.disable("bioimageio")


@contextlib.contextmanager
def collecting_open_files():
    """Run a block of bioimage.io calls without the ResourceWarnings of the files they leave
    open (bioimageio.spec 0.5.12 reads package files without closing them), and collect those
    left in reference cycles here rather than at a later garbage collection elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


__all__ = ["INSTALL", "RDF_NAMES", "collecting_open_files", "is_package", "quiet_bioimageio", "require_bioimageio",
           "trust_code"]
