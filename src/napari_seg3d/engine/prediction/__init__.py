"""Prediction: the sliding window over a volume (:mod:`.sliding_window`, from the small pure
functions of :mod:`.windows` and :mod:`.blocks`), many files (:mod:`.batch`, and on a Dask
cluster :mod:`.distributed`), predictions too large for memory (:mod:`.disk_stores`) and the
runs the widgets hand to a worker thread (:mod:`.jobs`). Every function takes one
:class:`~napari_seg3d.engine.config.PredictConfig`."""
