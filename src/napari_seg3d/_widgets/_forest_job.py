"""The Train widget's instant random-forest preview, in a thread of its own beside the training.

:func:`~napari_seg3d.engine.training.instant.instant_preview` runs in a plain thread, not a
napari worker: napari's worker pool has as many slots as the machine has cores, and a long
background job there would hold the Predict widget's worker back. Its records wait in a queue
that the widget empties on a timer (the GUI thread only writes them into the layer). The first
record (the slice on screen) is computed with every free core while the training thread waits
for it (at most :data:`FOREGROUND_S`); the rest waits for the network's first iteration (the
Trainer's build and first step would be slowed down several times by a thread beside them) and
then follows beside the training: beside a GPU with the free cores but one, as far as it goes;
beside a network training on the CPU in one thread and for at most :data:`CPU_BUDGET_S` of CPU
time (the view region, the full forest, the view again and the blocks nearest to it as far as
the time goes), so the network loses a few seconds at most. (A thread at a lower priority would not do: it
holds the GIL while it waits for a core, and the viewer stalls.)
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..engine.threads import free_threads
from ..engine.training.instant import ForestPreview, instant_preview

log = logging.getLogger(__name__)

FOREGROUND_S = 4.0  # the Trainer is built at the latest this long after Train was pressed
CPU_BUDGET_S = 6.0  # CPU seconds the preview may take from a network training on the CPU


class ForestJob:
    """One instant preview: ``records`` (a queue of :class:`ForestPreview`), ``first_record``
    (set once the slice on screen is done, or when the preview ended or failed).

    Args:
        image: ``(C, Z, Y, X)`` array or lazy source.
        labels: the annotation layer's ``(Z, Y, X)`` data (read slice by slice, not copied).
        view: the region on screen; ``z`` the displayed slice.
        spacing: voxel size; ``seed``: fixes the forests; ``threads``: the CPU threads setting.
        cpu_training: the network trains on the CPU (the rest of the preview then stays within
            :data:`CPU_BUDGET_S`).
    """

    def __init__(self, image, labels, view, z: int, *, spacing, seed: int, threads=None,
                 cpu_training: bool = True) -> None:
        self.records: queue.SimpleQueue[ForestPreview] = queue.SimpleQueue()
        self.first_record = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._go = threading.Event()  # the network has started: the rest may follow
        self._background = False  # the network is training
        self._cpu_at_background = 0.0  # this thread's CPU time when it started
        self._setting, self._cpu_training = threads, cpu_training
        self._args = (image, labels, view, z)
        self._kwargs = {"spacing": spacing, "seed": seed}
        self._thread = threading.Thread(target=self._run, name="seg3d-forest-preview",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the record being computed (the thread ends by itself)."""
        self._stop.set()
        self.first_record.set()

    def go_on(self) -> None:
        """The network has made its first step: compute the rest (call from any thread)."""
        self._go.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_first_record(self, cancelled=lambda: False, timeout: float = FOREGROUND_S) -> None:
        """Wait (in the training thread) until the slice on screen is done, at most ``timeout``
        seconds, or until ``cancelled()``."""
        end = time.monotonic() + timeout
        while not self.first_record.wait(0.05) and not cancelled() and time.monotonic() < end:
            pass

    def take(self) -> list[ForestPreview]:
        """The records computed since the last call."""
        out = []
        while True:
            try:
                out.append(self.records.get_nowait())
            except queue.Empty:
                return out

    def _threads(self) -> int:
        if not self._background:
            return free_threads(self._setting)
        return 1 if self._cpu_training else max(1, free_threads(self._setting) - 1)

    def _run(self) -> None:
        gen = instant_preview(*self._args, threads=self._threads, **self._kwargs)
        try:
            for record in gen:
                if self._stop.is_set():
                    break
                self.records.put(record)
                if not self.first_record.is_set():
                    self.first_record.set()
                    self._wait_for_the_network()
                if self._over_budget():
                    log.info("Instant preview stopped after %.1f s of CPU beside the network.",
                             CPU_BUDGET_S)
                    break
        except Exception as e:  # the preview is a bonus: the network trains without it
            log.warning("The instant random-forest preview failed", exc_info=True)
            self.error = e
        finally:
            gen.close()
            self.first_record.set()

    def _wait_for_the_network(self) -> None:
        """Until :meth:`go_on` (or :meth:`stop`); from then on the CPU time counts."""
        while not self._go.wait(0.05) and not self._stop.is_set():
            pass
        self._background = True
        self._cpu_at_background = time.thread_time()

    def _over_budget(self) -> bool:
        """Beside a network training on the CPU: its CPU time since the first record is spent."""
        return (self._background and self._cpu_training
                and time.thread_time() - self._cpu_at_background > CPU_BUDGET_S)


def forest_job_for(viewer, image_layer, annotation_layer, depth: int, width: int, *,
                   seed: int, threads=None, device: str = "auto", data=None) -> ForestJob:
    """The instant preview of what ``viewer`` shows of ``image_layer`` (or of ``data``, its
    channels stacked with others, over its grid): ``depth`` slices around the displayed one,
    ``width`` voxels in y and x around the view's centre, from the strokes of
    ``annotation_layer`` (not started)."""
    from ..engine import resolve_device
    from ..engine.training.views import ChannelView
    from . import _layers

    data = _layers.layer_array(image_layer) if data is None else data
    image = data if len(data.shape) == 4 else ChannelView(data)
    return ForestJob(image, _layers.layer_array(annotation_layer),
                     _layers.view_region(image_layer, viewer, depth, width),
                     _layers.displayed_z(image_layer, viewer),
                     spacing=_layers.voxel_size(image_layer), seed=seed, threads=threads,
                     cpu_training=resolve_device(device).type == "cpu")


def warm_up_forest() -> None:
    """Import scikit-learn in the background (1-3 s): the first instant preview need not wait."""
    import importlib

    threading.Thread(target=importlib.import_module, args=("sklearn.tree",), daemon=True,
                     name="seg3d-warm-up").start()
