"""Errors a user can cause, each raised with a sentence that says what was wrong and what to do."""


class Seg3DError(Exception):
    """Base class of every user-facing napari-seg3d error."""


class AnnotationError(Seg3DError, ValueError):
    """The annotations (or the image they go with) cannot be used for training."""


class ModelFileError(Seg3DError, ValueError):
    """A model file is missing, truncated, foreign or unsafe."""


class VolumeError(Seg3DError, ValueError):
    """A volume file cannot be read or written; the message says why and what to do."""
