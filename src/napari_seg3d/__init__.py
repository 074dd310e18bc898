"""napari-seg3d: deep-learning segmentation of 3D volumes from a few brush strokes.

Importing this package loads neither Qt nor napari: the engine (``napari_seg3d.engine``) and the
command line run headless. The napari widgets live in ``napari_seg3d._widgets``.
"""

__version__ = "0.1.0"
