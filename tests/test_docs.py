"""The user docs against the program (issue 19): every ``napari-seg3d`` command line in a code
block of README.md and docs/*.md parses with the real parser; every one in a ``bash`` block runs
for real, in document order, on the files of ``napari-seg3d demo --write-sample`` (train with tiny
settings, on the CPU); ``--help`` is plain text; the ``info`` example and the sample's menu path
are what the program prints and napari shows. A command that cannot be checked is listed below
with the reason: nothing is skipped silently, and a listed command that left the docs fails."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from napari_seg3d.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# synopses (in ``text`` blocks), not commands: they do not parse, by design
NOT_PARSED = {
    "napari-seg3d [--debug] {train,predict,info,demo,export} ...": "the synopsis of the command",
    "napari-seg3d export MODEL --out PACKAGE.zip [--image IMG] [--name NAME] [--description TEXT] "
    "[--author NAME ...]": "the synopsis of export, with optional parts in brackets",
    "napari-seg3d demo [--out demo-output] [--iterations 800] [--headless] [--device auto]":
        "the synopsis of demo, with optional parts in brackets",
}
# commands that parse but cannot run here
NOT_RUN = {
    "napari-seg3d predict --model model.pt --out results/ --format zarr big.h5:/raw":
        "an illustration for volumes larger than memory: needs a big HDF5 volume big.h5",
    "napari-seg3d predict --model /shared/model.pt --out /shared/results/ /shared/volumes/ "
    "--scheduler tcp://headnode:8786 --format h5": "needs a Dask cluster and /shared",
    "napari-seg3d predict --model model.pt --out results/ volumes/*.tif "
    "--scheduler tcp://192.168.1.5:8786": "needs a Dask scheduler at that address",
}
TINY_TRAIN = ["--iterations", "2", "--base-filters", "4", "--levels", "2", "--patch-size", "8",
              "16", "16", "--self-training", "0", "--quiet", "--device", "cpu"]
TINY_PREDICT = ["--quiet", "--device", "cpu"]
# reStructuredText markup: inline literals, roles, directives, bold
RST = re.compile(r"``|:(?:func|class|mod|meth|data|attr|ref|doc):`|^\s*\.\. \w+::|\*\*", re.MULTILINE)


def _code_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """``(language, lines)`` of each fenced code block, ``\\``-continued lines joined."""
    blocks, language, lines = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, _joined(lines)))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _joined(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line.strip())
    return out


def _commands() -> list[tuple[str, str, str]]:
    """``(document, language, command)`` of every napari-seg3d command line in a code block."""
    found = []
    for path in DOCS:
        for language, lines in _code_blocks(path):
            found += [(path.name, language, " ".join(shlex.split(line, comments=True)))
                      for line in lines if line.startswith("napari-seg3d")]
    return found


COMMANDS = _commands()


def _args(command: str) -> tuple[list[str], str | None]:
    """The arguments after ``napari-seg3d`` and the file a ``>`` sends stdout to."""
    tokens = shlex.split(command)[1:]
    if ">" in tokens:
        at = tokens.index(">")
        return tokens[:at], tokens[at + 1]
    return tokens, None


def test_the_docs_have_commands_and_every_listed_exception_is_still_there():
    assert len(COMMANDS) >= 15, COMMANDS
    commands = {command for _, _, command in COMMANDS}
    assert set(NOT_PARSED) | set(NOT_RUN) <= commands, (set(NOT_PARSED) | set(NOT_RUN)) - commands


@pytest.mark.parametrize("doc, language, command", COMMANDS,
                         ids=[f"{doc}: {command}" for doc, _, command in COMMANDS])
def test_every_command_in_the_docs_parses(capsys, doc, language, command):
    args, _ = _args(command)
    try:
        build_parser().parse_args(args)
        code = 0
    except SystemExit as done:  # --help exits 0, a bad option 2
        code = done.code
    err = capsys.readouterr().err
    if command in NOT_PARSED:
        assert code == 2 and language == "text", (command, err)
    else:
        assert code == 0, f"{doc}: {command}\n{err}"


@pytest.fixture(scope="module")
def sample_and_model(tmp_path_factory) -> Path:
    """A folder after the README's first two commands (tiny): ``sample/`` and ``model.pt``."""
    folder = tmp_path_factory.mktemp("docs-setup")
    with contextlib.chdir(folder):
        assert main(["demo", "--write-sample", "sample"]) == 0
        assert main(["train", "--image", "sample/image.tif", "--labels", "sample/scribbles.tif",
                     "--out", "model.pt", *TINY_TRAIN, "--no-report"]) == 0
    return folder


def _run(command: str) -> tuple[int, str]:
    """Run a documented command in-process, with tiny settings; its exit code and stdout."""
    args, redirect = _args(command)
    extra = {"train": TINY_TRAIN, "predict": TINY_PREDICT}.get(args[0], [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(args + extra)
        except SystemExit as done:  # --help
            code = done.code
    if redirect:
        Path(redirect).write_text(out.getvalue())
    return code, out.getvalue()


DOCS_RUN = sorted({doc for doc, language, command in COMMANDS
                   if language == "bash" and command not in NOT_RUN})


@pytest.mark.parametrize("doc", DOCS_RUN)
def test_the_commands_of_each_page_run_as_written(tmp_path, sample_and_model, capsys, doc):
    """In a fresh folder: empty if the page writes the sample itself (README, Command line),
    else holding the sample and a model, as after the Command line examples."""
    runs = [command for name, language, command in COMMANDS
            if name == doc and language == "bash" and command not in NOT_RUN]
    if not runs[0].startswith("napari-seg3d demo --write-sample"):
        shutil.copytree(sample_and_model, tmp_path, dirs_exist_ok=True)
    printed = []
    with contextlib.chdir(tmp_path):
        for command in runs:
            code, out = _run(command)
            assert code == 0, f"{doc}: {command}\n{out}\n{capsys.readouterr().err}"
            if command.startswith("napari-seg3d info") and "--config" not in command:
                assert json.loads(out)["architecture"] == "unet"
            printed.append(out)
    if doc == "README.md":  # train --truth prints the Dice, predict writes the labels
        assert "Dice against the ground truth: class 1" in printed[1], printed[1]
        assert printed[2].startswith("done") and (tmp_path / "results/image_labels.tif").is_file()


def test_the_readme_sequence_is_the_one_checked():
    readme = [command for doc, _, command in COMMANDS if doc == "README.md"]
    assert [c.split()[1] for c in readme] == ["demo", "train", "predict", "info"], readme
    assert "README.md" in DOCS_RUN


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return {"": parser, **action.choices}


@pytest.mark.parametrize("name", list(_subcommands()))
def test_help_is_plain_text(name):
    assert RST.findall("The ``napari-seg3d`` command: :func:`main`")  # what the module said
    text = _subcommands()[name].format_help()
    assert not RST.findall(text), text
    assert len(text.splitlines()) > 3


def _keys(value, prefix="") -> set[str]:
    if not isinstance(value, dict):
        return set()
    return {f"{prefix}{k}" for k in value} | {
        key for k, v in value.items() for key in _keys(v, f"{prefix}{k}.")}


def test_the_info_example_has_the_fields_info_prints(sample_and_model, capsys):
    blocks = _code_blocks(ROOT / "docs" / "model-file.md")
    example = json.loads("\n".join(next(lines for lang, lines in blocks if lang == "json")))
    assert main(["info", str(sample_and_model / "model.pt")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _keys(example) == _keys(printed)


def test_the_docs_name_the_sample_menu_as_napari_shows_it():
    from napari.plugins import menu_item_template

    manifest = yaml.safe_load((ROOT / "src" / "napari_seg3d" / "napari.yaml").read_text())
    (sample,) = manifest["contributions"]["sample_data"]  # one sample: no submenu
    title = menu_item_template.format(manifest["display_name"], sample["display_name"])
    paths = [m for path in DOCS for m in re.findall(r"File > Open Sample > ([^*\n]+)\*\*",
                                                    path.read_text())]
    assert paths and set(paths) == {title}, (paths, title)
