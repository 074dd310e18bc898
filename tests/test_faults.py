"""Faults, for real: a process killed while it writes a model file or a batch output leaves the
previous file intact and nothing partial under the final name; batch outputs stay in the output
folder whatever the input names, and inputs are never modified."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_to_end

from napari_seg3d.engine import TrainConfig, Trainer, load_model, save_model
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.io._temps import host_tag, remove_stale_temps
from napari_seg3d.engine.prediction.batch import predict_files

_WRITER = """
import sys, numpy as np, torch
from napari_seg3d.engine import load_model, save_model
from napari_seg3d.engine.io import read_volume, write_volume
kind, source, target = sys.argv[1:4]
model = load_model(source)
big = np.random.default_rng(0).random((64, 256, 256), dtype=np.float32)
print("ready", flush=True)
i = 0
while True:  # write again and again until killed
    i += 1
    if kind == "model":
        model.history["loss"] = [float(i)] * 200_000  # a larger file: more time inside the write
        save_model(model, target)
    else:
        write_volume(target, big + i)
"""


def _train_tiny(image, labels):
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=2, device="cpu", self_training=0)
    gen = Trainer(image, labels, cfg).run()
    return run_to_end(gen).last


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def _kill_while_writing(kind: str, source: Path, target: Path, delays, check, *,
                        min_kills: int = 4) -> int:
    """SIGKILL a writer of ``target`` after each delay (at least ``min_kills`` times, more until
    one kill is seen to land mid-write, at most ``len(delays)``), calling ``check()`` after each
    kill. Returns the number of kills that left a new hidden temporary, i.e. landed mid-write
    (each new writer deletes the temporaries of dead ones, so they are counted kill by kill)."""
    mid_write = 0
    for n, delay in enumerate(delays, 1):
        before = _parts(target.parent)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, kind, str(source), str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        mid_write += bool(set(_parts(target.parent)) - set(before))
        check()
        if n >= min_kills and mid_write:
            break
    return mid_write


@pytest.mark.parametrize("kind, name", [("model", "model.pt"), ("tif", "out.tif"),
                                        ("h5", "out.h5")])
def test_killed_writer_leaves_a_whole_file_under_the_final_name(blobs, tmp_path, kind, name):
    image, _, labels = blobs
    source = save_model(_train_tiny(image, labels), tmp_path / "source.pt")
    target = tmp_path / name
    if kind == "model":
        save_model(load_model(source), target)
    else:
        write_volume(target, np.zeros((4, 4, 4), np.float32))

    def whole() -> None:  # whatever moment the kill came, the final name holds a whole file
        if kind == "model":
            assert load_model(target).class_values == (1, 2)
        else:
            data = np.asarray(read_volume(target).data)
            assert data.shape in ((4, 4, 4), (64, 256, 256))
            if data.shape == (64, 256, 256):
                assert np.isfinite(data).all() and data.min() >= 1.0  # one whole write (big + i)

    delays = (0.3, 0.9, 1.7, 2.6, 0.5, 1.2, 2.0, 0.7, 1.5, 2.3)
    if kind == "model":  # a kill seldom lands in a model file's short write: four tries, then
        delays = delays[:4]  # the writer that holds its temporary (below)
    mid_write = _kill_while_writing(kind, source, target, delays, whole)
    if kind == "model" and not mid_write:  # its bytes are made before a short write: kill a
        _kill_holding_a_temporary(target)   # writer while it holds its temporary open instead
        whole()
        mid_write = 1
    assert mid_write, "no kill landed mid-write"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in {"source.pt", name}]
    # only hidden temporaries of interrupted writes remain
    assert all(n.startswith(".") and n.endswith(".part") for n in leftovers), leftovers


HOSTILE = ["../escape.tif", "..\\win.tif", ".hidden.tif", "spaces and ümlauts.tif",
           "a;rm -rf ~.tif", "-dash.tif", "x" * 200 + ".tif", "dots....tif"]


def test_batch_outputs_stay_in_the_output_folder_and_inputs_are_untouched(blobs, tmp_path):
    image, _, labels = blobs
    model = _train_tiny(image, labels)
    inputs_dir, out_dir = tmp_path / "in" / "deep", tmp_path / "out"
    inputs_dir.mkdir(parents=True)
    paths = []
    for name in HOSTILE:
        path = inputs_dir / name.replace("/", "_")
        write_volume(path, image)
        path.chmod(0o444)  # read-only: reading must not need write access
        paths.append(path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}
    results = predict_files(model, [str(p) for p in paths], out_dir, device="cpu", batch_size=2)
    assert [r.status for r in results] == ["done"] * len(paths), [r.reason for r in results]
    outputs = [Path(r.output) for r in results]
    assert len(set(outputs)) == len(outputs)  # no two inputs share an output
    for out in outputs:
        assert out.resolve().parent == out_dir.resolve() and out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*_labels.tif")) == sorted(o.name for o in outputs)
    for p, (data, mtime) in before.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime


# --- stale temporaries: what a killed writer leaves is removed by the next write -------------

_HOLDER = """
import sys
from napari_seg3d.engine.io._temps import temp_path
part = temp_path(sys.argv[1])
part.write_bytes(b"half a file")
print(part, flush=True)
sys.stdin.read()  # a live writer: holds its temporary until stdin closes
"""


def _kill_holding_a_temporary(target: Path) -> None:
    """SIGKILL a writer of ``target`` while its temporary is open (see ``_HOLDER``)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert Path(holder.stdout.readline().strip()).exists()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()
    holder.stdin.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def _age(path: Path, hours: float) -> Path:
    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)
    return path


@pytest.mark.parametrize("kind, name", [
    ("model", "model.pt"),
    ("tif", "out.tif"),
    ("h5", "out.h5"),
])
def test_the_next_write_removes_what_a_killed_writer_left(blobs, tmp_path, kind, name):
    image, _, labels = blobs
    source = save_model(_train_tiny(image, labels), tmp_path / "src" / "source.pt")
    target = tmp_path / name
    for delay in (0.9, 1.7, 2.6)[:1 if kind == "model" else 3]:  # until a kill lands mid-write
        _kill_while_writing(kind, source, target, (delay,), lambda: None, min_kills=1)
        if _parts(tmp_path):
            break
    if not _parts(tmp_path):  # a model file's bytes are made before its short write: kill a
        _kill_holding_a_temporary(target)  # writer while it holds its temporary open instead
    assert len(_parts(tmp_path)) == 1  # each writer's first write removed its predecessor's
    if kind == "model":
        save_model(load_model(source), target)
        assert load_model(target).class_values == (1, 2)
    else:
        write_volume(target, np.zeros((4, 4, 4), np.float32))
        assert read_volume(target).data.shape == (4, 4, 4)
    assert _parts(tmp_path) == []


def test_a_live_writers_temporary_is_kept_until_it_exits(blobs, tmp_path):
    image, _, labels = blobs
    model = _train_tiny(image, labels)
    target = tmp_path / "model.pt"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        part = Path(holder.stdout.readline().strip())
        assert part.parent == tmp_path and part.name.startswith(f".model.pt.{host_tag()}-{holder.pid}-")
        save_model(model, target)
        assert part.read_bytes() == b"half a file"  # another running process's write: kept
        assert remove_stale_temps(target) == [] and part.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    save_model(model, target)  # the writer has exited: its temporary goes
    assert _parts(tmp_path) == [] and load_model(target).class_values == (1, 2)


def test_only_stale_temporaries_of_the_target_are_removed(tmp_path):
    target = tmp_path / "out.tif"
    here, dead = host_tag(), _dead_pid()
    removed = {  # all 25 h old unless stated
        "dead writer, fresh": f".out.tif.{here}-{dead}-0123abcd.part",
        "dead writer, old": f".out.tif.{here}-{dead}-89abcdef.part",
        "other host, old": f".out.tif.00000000-{os.getpid()}-0123abcd.part",
        "older scheme (io), old": ".out.tif.0123abcd.part",
        "older scheme (mkstemp), old": ".out.tif.k3_x9q0z.part",
    }
    kept = {
        "this process": f".out.tif.{here}-{os.getpid()}-0123abcd.part",
        "other host, fresh": f".out.tif.00000000-{dead}-0123abcd.part",
        "older scheme, fresh": ".out.tif.fedcba98.part",
        "no leading dot": f"out.tif.{here}-{dead}-0123abcd.part",
        "empty middle": ".out.tif..part",
        "another target": f".other.tif.{here}-{dead}-0123abcd.part",
        "a longer target name": f".out.tif.x.tif.{here}-{dead}-0123abcd.part",
        "not .part": f".out.tif.{here}-{dead}-0123abcd.part.bak",
        "the target": "out.tif",
        "unrelated": "notes.txt",
    }
    for label, name in {**removed, **kept}.items():
        path = tmp_path / name
        path.write_bytes(b"x")
        if "fresh" not in label and label != "this process":
            _age(path, 25)
    store = tmp_path / f".out.tif.{here}-{dead}-aaaaaaaa.part"  # a zarr store being written
    (store / "c" / "0").mkdir(parents=True)
    (store / "c" / "0" / "0").write_bytes(b"chunk")
    removed["dead writer's folder"] = store.name
    unknown = [".out.tif.0badf00d.part", f".out.tif.11111111-{dead}-0123abcd.part"]
    for name in unknown:  # folders of unknown writers: kept, however old
        (tmp_path / name).mkdir()
        _age(tmp_path / name, 25)
    link = tmp_path / f".out.tif.{here}-{dead}-bbbbbbbb.part"
    link.symlink_to(tmp_path / "notes.txt")
    got = remove_stale_temps(target)
    assert sorted(p.name for p in got) == sorted(removed.values())
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(kept.values()) | {link.name, *unknown}
    assert (tmp_path / "notes.txt").read_bytes() == b"x"  # the link's target too
    assert remove_stale_temps(tmp_path / "missing" / "out.tif") == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_reused_process_id_does_not_keep_a_temporary_forever(tmp_path):
    """A live process that started after the temporary was last written cannot be its writer."""
    target = tmp_path / "model.pt"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        part = tmp_path / f".model.pt.{host_tag()}-{sleeper.pid}-0123abcd.part"
        part.write_bytes(b"x")
        assert remove_stale_temps(target) == []  # written after the process started: its own
        _age(part, 1)  # last written an hour before this process existed
        assert remove_stale_temps(target) == [part]
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
