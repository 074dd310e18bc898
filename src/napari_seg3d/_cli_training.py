"""How ``napari-seg3d train`` runs a training: the line that says what the run will do, the tqdm
bar (whose total follows a time budget once it is fixed), Ctrl-C and SIGTERM that stop it
cleanly, and the signals held while the models are written."""

from __future__ import annotations

import contextlib
import sys


def plan_line(cfg, device: str, start: int) -> str:
    """What the run will do, printed before the progress bar."""
    from .engine.budget import FIX_AFTER

    where = "the GPU" if device in ("cuda", "mps") else "the CPU"
    if cfg.minutes is not None:
        return (f"Time budget: {cfg.minutes:g} minutes on {where}, at most "
                f"{cfg.iterations - start} iterations: how many follows from the speed of the "
                f"first {FIX_AFTER} steps.")
    return f"Training {cfg.iterations - start} iterations on {where}."


@contextlib.contextmanager
def signals_held(message: str):
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then raise KeyboardInterrupt: a
    save cut short would lose the whole run. Does nothing outside the main thread."""
    import signal

    held: list[int] = []

    def hold(signum, frame):
        if not held:
            print(message, file=sys.stderr)
        held.append(signum)

    try:
        previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        raise KeyboardInterrupt


def run_training(trainer, total: int, start: int, *, quiet: bool):
    """Run the training generator under a tqdm bar; the first Ctrl-C (or SIGTERM, which cluster
    schedulers send before a time limit) stops training cleanly and the models are saved; a
    second Ctrl-C interrupts."""
    import signal

    from tqdm import tqdm

    from ._cli_run import SignalCount
    from .engine import run_to_end

    def stop(signum, frame):
        if signum == signal.SIGINT and signals.count(signum) > 1:  # two Ctrl-C at once
            raise KeyboardInterrupt
        tqdm.write("Stopping now: the models of the last finished step are saved (Ctrl-C "
                   "again to abort)...", file=sys.stderr)
        trainer.request_stop()
        signal.signal(signal.SIGINT, previous)

    signals = SignalCount.start()
    previous = signal.signal(signal.SIGINT, stop)
    previous_term = signal.signal(signal.SIGTERM, stop)
    try:
        with tqdm(total=total, initial=start, unit="it", desc="train", disable=quiet) as bar:
            progress = _Progress(bar, quiet)
            return run_to_end(trainer.run(), progress.show)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        signals.stop()


class _Progress:
    """One training iteration on the tqdm bar: its total (a time budget's, once fixed), the
    estimate line once, loss, speed, threads, validation Dice."""

    def __init__(self, bar, quiet: bool) -> None:
        self.bar, self.quiet, self.estimate = bar, quiet, None

    def show(self, p) -> None:
        from tqdm import tqdm

        from .engine.budget import about

        bar = self.bar
        bar.total = p.iterations  # a time budget's total, once fixed
        if p.estimate is not None and self.estimate is None and not self.quiet:
            self.estimate = p.estimate
            tqdm.write(p.estimate.describe() + ".", file=sys.stderr)
            bar.set_description(f"train ({about(p.estimate.seconds)})")
        bar.update(1)
        post = {"loss": f"{p.loss:.3f}", "vox/s": f"{p.voxels_per_s:.3g}", "threads": p.threads}
        if p.val_dice is not None:
            post["val_dice"] = " ".join(f"{d:.3f}" for d in p.val_dice)
        bar.set_postfix(post, refresh=False)
