"""Does a file that PyTorch's safe loader refused hold code? (:func:`holds_code`)

``torch.load(weights_only=True)`` never runs code, but its message for a file that asks for
code has changed across versions ("Unsupported global: GLOBAL ...", "Trying to load unsupported
GLOBAL ... whose module ... is blocked"), and it stops at a protocol it does not read (a plain
pickle of protocol 4 or 5: "Unsupported operand 149") before it reaches any name. The pickle is
then read here as a stream of opcodes, which also runs nothing: one that imports a name (the
first step of any code a pickle runs) means the file holds code or objects.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

_REFUSED = ("unsupported global", "whose module", "is blocked", "not an allowed global")
_IMPORTS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_MAX_OPS = 1_000_000


def holds_code(path: Path, error: BaseException) -> bool:
    """Whether ``error``, raised by ``torch.load(path, weights_only=True)``, means the file asks
    for code or objects (rather than being truncated or foreign)."""
    text = str(error).lower()
    if any(words in text for words in _REFUSED):
        return True
    try:
        return _imports_a_name(_pickle_bytes(path))
    except Exception:  # noqa: BLE001 - unreadable: truncated or not a pickle
        return False


def _pickle_bytes(path: Path) -> bytes:
    """The pickle of a ``torch.save`` archive (its ``data.pkl``), or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            return archive.read(name)
    return path.read_bytes()


def _imports_a_name(data: bytes) -> bool:
    """Whether the pickle ``data`` imports a name other than PyTorch's own tensor rebuilders."""
    for n, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(data))):
        if n > _MAX_OPS:
            return False
        if op.name in _IMPORTS:
            module = str(arg).split(" ")[0] if op.name == "GLOBAL" else ""
            if module == "torch" or module.startswith("torch.") or arg == "collections OrderedDict":
                continue
            return True
    return False
