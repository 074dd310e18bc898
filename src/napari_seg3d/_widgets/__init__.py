"""napari dock widgets: they wire napari layers to the engine, nothing more."""
