"""Load a bioimage.io model package as a model napari-seg3d predicts with.

- A package napari-seg3d exported becomes the :class:`~..model_file.SegmentationModel` it was
  (network, classes, normalisation, training settings): its ``pytorch_state_dict`` weights are
  loaded through bioimageio.core into :class:`.network.ZooNetwork`, our own code.
- Another tool's 3D segmentation model that fits (see :mod:`._fit`) becomes a
  :class:`.foreign.PackageModel`.

Weights are never unpickled as code (``torch.load(weights_only=True)``, as bioimageio.core
does). A network whose code comes with the package (an architecture file inside it, or
TorchScript, which is a program by design) is loaded only when the user trusts the package:
``NAPARI_SEG3D_TRUST_CODE=1``. An architecture from an installed library must be a
``torch.nn.Module`` class. Nothing reaches the network: I/O checks are off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from ..config import ModelConfig, TrainConfig
from ..errors import ModelFileError
from . import RDF_NAMES, collecting_open_files, quiet_bioimageio, require_bioimageio, trust_code

log = logging.getLogger(__name__)

TRUST = ("napari-seg3d runs it only for a package from a source you trust: set the environment "
         "variable NAPARI_SEG3D_TRUST_CODE=1 to load it")


def load_package(path) -> object:
    """The model of the bioimage.io package at ``path`` (a zip, an ``rdf.yaml`` or a folder).

    Raises:
        ModelFileError: with a sentence, for a package that is invalid, not a model, does not
            fit napari-seg3d, or holds code the user has not trusted.
    """
    path = Path(path)
    require_bioimageio(f"{path.name} is a bioimage.io package; loading it")
    quiet_bioimageio()
    from ._describe import ARCHITECTURE_CALLABLE, ARCHITECTURE_MODULE, CONFIG_KEY

    with collecting_open_files(), _opened(path) as source:
        descr = read_description(source, path.name)
        ours = (descr.config.model_extra or {}).get(CONFIG_KEY)
        arch = getattr(descr.weights.pytorch_state_dict, "architecture", None)
        if ours and getattr(arch, "import_from", None) == ARCHITECTURE_MODULE \
                and str(arch.callable) == ARCHITECTURE_CALLABLE:
            return _our_model(descr, ours, path)
        return _foreign_model(descr, path)


@contextlib.contextmanager
def _opened(path: Path):
    """A zip package as a ``ZipFile`` we close (the description keeps a reference to its
    source, which would otherwise stay open), else the ``rdf.yaml`` to read."""
    if path.is_dir():
        yield next(p for p in (path / n for n in RDF_NAMES) if p.is_file())
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            yield z
    else:
        yield path


def read_description(source, name: str):
    """The model description (converted to spec 0.5) of ``source`` (a ``ZipFile`` or a YAML
    path), or a sentence naming the package ``name``."""
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    try:
        descr = load_description(source, format_version="latest", perform_io_checks=False)
    except Exception as e:  # unreadable zip or YAML
        raise ModelFileError(f"Cannot read the bioimage.io package {name}: {e}") from e
    if isinstance(descr, InvalidDescr):
        reason = (descr.get_reason() or "invalid description").splitlines()[0]
        raise ModelFileError(f"{name} is not a valid bioimage.io package ({reason}).")
    if not isinstance(descr, v0_5.ModelDescr):
        raise ModelFileError(f"{name} is a bioimage.io {descr.type}, not a model.")
    return descr


def _our_model(descr, config: dict, path: Path):
    """Rebuild the ``SegmentationModel`` that napari-seg3d exported."""
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    from ..model_file import SegmentationModel
    from ..normalization import Normalization

    try:
        zoo = load_torch_model(descr.weights.pytorch_state_dict, load_state=True,
                               devices=["cpu"])
        vs = config.get("voxel_size")
        return SegmentationModel(
            network=zoo.net, model_config=ModelConfig.from_dict(config["model_config"]),
            train_config=TrainConfig.from_dict(config["train_config"]),
            class_values=tuple(int(v) for v in config["class_values"]),
            class_names=tuple(str(n) for n in config["class_names"]),
            normalization=Normalization.from_dict(config["normalization"]),
            in_channels=int(config["in_channels"]),
            voxel_size=None if vs is None else tuple(float(v) for v in vs),
            iteration=int(config.get("iteration", 0)),
            history={"best_val_dice": config.get("best_val_dice")})
    except Exception as e:
        raise ModelFileError(f"{path.name} is damaged or incomplete: {e}") from e


def _foreign_model(descr, path: Path):
    """Another tool's model, if it fits (see :mod:`._fit`)."""
    from ._fit import check_fit
    from .foreign import package_model

    fit = check_fit(descr, path.name, _test_shape(descr))
    network = _network(descr, path.name)
    return package_model(network, fit, str(path))


def _test_shape(descr) -> tuple[int, ...] | None:
    from bioimageio.spec.utils import load_array

    tensor = descr.inputs[0].test_tensor
    try:
        return tuple(np.shape(load_array(tensor))) if tensor is not None else None
    except (OSError, ValueError, KeyError):  # the window then comes from the sizes alone
        return None


def _network(descr, name: str):
    """The package's torch module, from the weights napari-seg3d may load (see module doc)."""
    weights = descr.weights
    state, script = weights.pytorch_state_dict, weights.torchscript
    if state is None and script is None:
        formats = ", ".join(w for w, entry in weights if entry is not None)
        raise ModelFileError(f"{name} does not fit napari-seg3d: it has only {formats} "
                             "weights; napari-seg3d runs PyTorch weights (pytorch_state_dict "
                             "or torchscript).")
    if state is not None and _library_module(state.architecture):
        return _load_state_dict(state, name)
    if not trust_code():
        what = (f"its network is Python code inside the package ({state.architecture.source})"
                if state is not None and hasattr(state.architecture, "source")
                else "its network is TorchScript, a program")
        raise ModelFileError(f"{name} holds code: {what}. {TRUST}.")
    if state is not None and hasattr(state.architecture, "source"):
        return _load_state_dict(state, name)
    return _load_torchscript(script, name)


def _library_module(architecture) -> bool:
    """Whether the architecture is a ``torch.nn.Module`` class of an installed library; raises
    a sentence for one that cannot be imported or is something else."""
    if not hasattr(architecture, "import_from"):
        return False
    import importlib

    from torch import nn

    try:
        target = getattr(importlib.import_module(architecture.import_from),
                         str(architecture.callable))
    except (ImportError, AttributeError) as e:
        raise ModelFileError(f"The network of this package, {architecture.import_from}."
                             f"{architecture.callable}, cannot be imported ({e}); install the "
                             "library it comes from.") from e
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ModelFileError(f"The network of this package, {architecture.import_from}."
                             f"{architecture.callable}, is not a torch.nn.Module class; "
                             "napari-seg3d does not call it.")
    return True


def _load_state_dict(weights, name: str):
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    try:
        return load_torch_model(weights, load_state=True, devices=["cpu"]).eval()
    except Exception as e:
        raise ModelFileError(f"Cannot load the weights of {name}: {e}") from e


def _load_torchscript(weights, name: str):
    import warnings

    import torch

    try:
        data = weights.get_reader().read()
        with warnings.catch_warnings():  # TorchScript is deprecated in PyTorch, still read here
            warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated",
                                    DeprecationWarning)
            return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except Exception as e:
        raise ModelFileError(f"Cannot load the TorchScript weights of {name}: {e}") from e
