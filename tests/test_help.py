"""``--help`` layout (options in sections, nothing cut off), the command recorded with a model, and
which error a command gives first."""

import json
import shlex
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli_helpers import assert_user_error, invoke
from trvae_cli.cli import (EMBED_SECTIONS, EVALUATE_SECTIONS, TRAIN_SECTIONS, TRANSFORM_SECTIONS, VALIDATE_SECTIONS,
                           SectionedCommand, _invocation, _input_kind, main)

SECTIONS = {"train": TRAIN_SECTIONS, "transform": TRANSFORM_SECTIONS, "embed": EMBED_SECTIONS,
            "evaluate": EVALUATE_SECTIONS, "validate": VALIDATE_SECTIONS}
IMAGES = "Images only"


def command(name) -> click.Command:
    return main.commands[name]


def top() -> click.Context:
    """``trvae``'s context. A command's context needs it as parent: click caches a command's help
    option the first time it is asked for, so one made without -h would stay without it."""
    return click.Context(main, info_name="trvae", **main.context_settings)


def context(name) -> click.Context:
    return click.Context(command(name), info_name=name, parent=top())


def parsed(name, args) -> click.Context:
    return command(name).make_context(name, [str(a) for a in args], parent=top())


def help_text(*args) -> str:
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    return result.stdout


def sections_of(text: str) -> dict[str, str]:
    """Heading -> the text under it, for every 'Heading:' line of a help page (the usage excepted)."""
    out, title = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    return out


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- sections

@pytest.mark.parametrize("name", list(SECTIONS))
def test_every_option_is_in_exactly_one_section(name):
    cmd = command(name)
    assert isinstance(cmd, SectionedCommand)
    with context(name) as ctx:
        assert cmd.unknown_names(ctx) == [], "names in the sections that are no option (a typo?)"
        layout = cmd.layout(ctx)
        assert SectionedCommand.OTHER not in layout, \
            f"options in no section of {name}: {[p.opts for p in layout[SectionedCommand.OTHER]]}"
        listed = [p.name for params in layout.values() for p in params]
        shown = [p.name for p in cmd.get_params(ctx) if p.get_help_record(ctx) is not None]
        assert sorted(listed) == sorted(shown)      # each exactly once
        assert len(set(listed)) == len(listed)


def test_an_option_left_out_of_the_sections_is_shown_apart():
    @click.command(cls=SectionedCommand, sections={"Data": "--a"})
    @click.option("--a", help="first")
    @click.option("--new-option", help="nobody placed me")
    def cmd(a, new_option):
        pass

    result = CliRunner().invoke(cmd, ["--help"])
    parts = sections_of(result.output)
    assert list(parts) == ["Data", SectionedCommand.OTHER]
    assert "--new-option" in parts[SectionedCommand.OTHER] and "--help" in parts[SectionedCommand.OTHER]


@pytest.mark.parametrize("name", list(SECTIONS))
def test_help_shows_the_declared_sections_in_order(name):
    parts = sections_of(help_text(name))
    assert list(parts) == list(SECTIONS[name])
    for title, names in SECTIONS[name].items():
        for flag in names.split():
            assert flag in parts[title], (flag, title)
    assert "-h, --help" in list(parts.values())[-1]


def test_train_help_groups():
    parts = sections_of(help_text("train"))
    assert list(parts) == ["Data", "Model", "Training", IMAGES, "Batch job"]
    for flag in ("DATA", "--condition", "--cell-type-key", "--exclude", "--layer", "--backed", "--out"):
        assert flag in parts["Data"]
    for flag in ("--preset", "--hidden", "--latent-dim", "--mmd-dim", "--mmd-on", "--alpha", "--dropout"):
        assert flag in parts["Model"]
    for flag in ("--epochs", "--batch-size", "--learning-rate", "--early-stopping-patience", "--lr-factor",
                 "--kl-warmup", "--seed", "--precision", "--jit"):
        assert flag in parts["Training"]
    for flag in ("--checkpoint-every", "--resume", "--threads", "--strategy", "--log-format", "--quiet", "--force"):
        assert flag in parts["Batch job"]


@pytest.mark.parametrize("name", list(SECTIONS))
def test_image_options_are_only_under_images(name):
    parts = sections_of(help_text(name))
    image_flags = {p.opts[0] for p in command(name).params if getattr(p, "only", None) == "images"}
    assert image_flags == set(SECTIONS[name].get(IMAGES, "").split()), \
        "the images section holds the images-only options (only=\"images\"), all of them and nothing else"
    for title, body in parts.items():
        rows = {line.split()[0] for line in body.splitlines() if line.startswith("  -")}
        assert (rows & image_flags == set()) == (title != IMAGES) or not image_flags, (title, rows)
    if name == "train":
        assert image_flags == {"--image-size", "--arch", "--filters"}
    if name == "transform":
        assert image_flags == {"--domain"}


@pytest.mark.parametrize("args", [(), ("train",), ("transform",), ("embed",), ("evaluate",)])
def test_no_help_text_is_cut_off(args):
    text = help_text(*args)
    for line in text.splitlines():
        if not line.startswith("Usage:"):
            assert not line.rstrip().endswith("..."), line
    assert "-h, --help" in text and invoke(*args, "-h").stdout == text
    if args:     # every option's whole help text is there (wrapped, not shortened, no flag split at a hyphen)
        cmd = command(args[0])
        with context(args[0]) as ctx:
            for param in cmd.get_params(ctx):
                record = param.get_help_record(ctx)
                if record is not None:
                    assert flat(record[1]) in flat(text), record
    else:
        for name, cmd in main.commands.items():
            assert flat(cmd.get_short_help_str(limit=10**6)) in flat(text), name


def test_help_stays_within_its_width():
    for args in (("train",), ("transform",)):
        result = CliRunner().invoke(main, [*args, "--help"], env={"COLUMNS": "200"})
        assert max(len(line) for line in result.stdout.splitlines()) <= 100     # max_content_width
        result = CliRunner().invoke(main, [*args, "-h"], env={"COLUMNS": "80"})
        assert max(len(line) for line in result.stdout.splitlines()) <= 80


# --------------------------------------------------------------------------- the recorded command

def _parse(recorded: str) -> click.Context:
    words = shlex.split(recorded)
    assert words[:2] == ["trvae", "train"], words
    return parsed("train", words[2:])


def test_recorded_command_of_a_cell_model_reproduces_it_without_image_options(trained_model):
    from trvae_cli.cli import _given_settings
    from trvae_cli.config import SETTING_NAMES, resolve_settings

    cfg = json.loads((trained_model / "config.json").read_text())
    recorded = cfg["command"]
    words = shlex.split(recorded)
    for flag in ("--filters", "--arch", "--image-size"):
        assert flag not in words, recorded
    for flag in ("--hidden", "--seed", "--epochs", "--latent-dim", "--mmd-dim", "--condition", "--exclude"):
        assert flag in words, recorded

    ctx = _parse(recorded)
    opts = {k: v for k, v in ctx.params.items() if k in SETTING_NAMES}
    again = resolve_settings(preset=ctx.params["preset"], given=_given_settings(ctx, opts))
    assert again.to_dict() == cfg["training"]      # the same settings, every one
    data = cfg["data"]
    assert Path(ctx.params["data"]).resolve() == Path(data["path"]).resolve()
    assert ctx.params["condition_key"] == data["condition_key"]
    assert ctx.params["cell_type_key"] == data["cell_type_key"]
    assert list(ctx.params["exclude"]) == data["exclude"]


def test_recorded_command_keeps_only_the_options_of_the_input_kind(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    assert _input_kind(str(folder)) == "images" and _input_kind(str(tmp_path / "x.h5ad")) == "cells"
    assert _input_kind(str(tmp_path / "manifest.csv")) == "images"

    args = ["--filters", "8,16", "--image-size", "16", "--layer", "counts", "--backed", "--condition", "c",
            "--hidden", "32", "--seed", "3"]
    images = shlex.split(_invocation(parsed("train", [folder, *args]), kind="images"))
    cells = shlex.split(_invocation(parsed("train", ["d.h5ad", *args]), kind="cells"))
    assert images[:3] == ["trvae", "train", str(folder)] and cells[:3] == ["trvae", "train", "d.h5ad"]
    image_only, cell_only = ["--filters", "--image-size", "--arch"], ["--layer", "--backed", "--condition"]
    for words, kept, dropped in ((images, image_only, cell_only), (cells, cell_only, image_only)):
        for flag in ["--hidden", "--seed", "--epochs", *kept]:
            assert flag in words, (flag, words)
        for flag in dropped:
            assert flag not in words, (flag, words)
    assert images[images.index("--filters") + 1] == "8,16" and cells[cells.index("--seed") + 1] == "3"


# --------------------------------------------------------------------------- messages and their order

def test_train_without_condition_names_the_documented_flag(tiny_h5ad, tmp_path):
    line = assert_user_error(invoke("train", tiny_h5ad, "--out", tmp_path / "m", "-q"), "--condition")
    assert "--condition-key" not in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("model_dir_exists", [False, True])
def test_train_missing_data_is_said_before_the_output(model_dir_exists):
    runner = CliRunner()
    with runner.isolated_filesystem():
        if model_dir_exists:
            Path("trvae_model").mkdir()
            Path("trvae_model", "keep.txt").write_text("mine")
        result = runner.invoke(main, ["train", "nope.h5ad", "--condition", "stim"])
        line = assert_user_error(result, "data file not found", "nope.h5ad")
        assert "output exists" not in line


def test_transform_and_embed_missing_model_is_said_before_the_output():
    runner = CliRunner()
    with runner.isolated_filesystem():
        open("p.h5ad", "w").write("mine")
        for args in (["transform", "--from", "a", "--to", "b", "--out", "p.h5ad"],
                     ["transform", "--model", "nomodel", "--from", "a", "--to", "b", "--out", "p.h5ad"],
                     ["embed", "--out", "p.h5ad"],
                     ["embed", "--model", "nomodel", "--out", "p.h5ad"]):
            line = assert_user_error(runner.invoke(main, args), "model directory not found")
            assert "output exists" not in line, args
        assert open("p.h5ad").read() == "mine"


def test_transform_and_embed_missing_data_is_said_before_the_output(trained_model, tmp_path):
    runner = CliRunner()
    # a model whose training data have gone: the default --data is missing too
    moved = tmp_path / "moved_model"
    shutil.copytree(trained_model, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["data"]["path"] = str(tmp_path / "gone.h5ad")
    (moved / "config.json").write_text(json.dumps(cfg))
    with runner.isolated_filesystem(temp_dir=tmp_path):
        open("p.h5ad", "w").write("mine")
        for args, missing in (
                (["transform", "--model", trained_model, "--data", "nope.h5ad", "--from", "control", "--to",
                  "stimulated", "--out", "p.h5ad"], "nope.h5ad"),
                (["transform", "--model", moved, "--from", "control", "--to", "stimulated", "--out", "p.h5ad"],
                 "gone.h5ad"),
                (["embed", "--model", trained_model, "--data", "nope.h5ad", "--out", "p.h5ad"], "nope.h5ad"),
                (["embed", "--model", moved, "--out", "p.h5ad"], "gone.h5ad")):
            line = assert_user_error(runner.invoke(main, [str(a) for a in args]), "not found", missing)
            assert "output exists" not in line, args
        assert open("p.h5ad").read() == "mine"


def test_train_without_condition_says_so_before_the_output(tiny_h5ad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trvae_model").mkdir()
    assert_user_error(invoke("train", str(tiny_h5ad)), "--condition is required")
