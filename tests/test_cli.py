"""The `edsr` parser's shape: every flag in both spellings, choices from the modules that own them, one source of
defaults with Options."""

import argparse

import pytest

from edsr_lib import cli
from edsr_lib.cli import flags
from edsr_lib.options import Options


def _subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", [name for name, _ in cli.COMMANDS])
def test_every_flag_takes_both_spellings(name):
    for action in _subcommands()[name]._actions:
        for option in action.option_strings:
            if option.startswith("--") and ("_" in option or "-" in option[2:]):
                assert option.replace("-", "_").replace("__", "--", 1) in action.option_strings, option
                assert "--" + option[2:].replace("_", "-") in action.option_strings, option


def test_spellings_parse_to_the_same_value():
    parser = cli.build_parser()
    a = parser.parse_args(["eval", "--bicubic", "--scale", "2", "--data-test", "Set14", "--self-ensemble"])
    b = parser.parse_args(["eval", "--bicubic", "--scale", "2", "--data_test", "Set14", "--self_ensemble"])
    assert vars(a) == vars(b) and a.data_test == "Set14" and a.self_ensemble is True
    train = parser.parse_args(["train", "--n-feats", "8", "--patch_size", "24"])
    assert (train.n_feats, train.patch_size) == (8, 24)


def test_defaults_and_choices_come_from_their_owners():
    from edsr_lib.export import FORMATS, MINDIR_ENGINES
    from edsr_lib.images import ALPHA_MODES
    from edsr_lib.kernels import CONV_ALGORITHMS
    from edsr_lib.model import PRESETS
    from edsr_lib.progress import PROGRESS_MODES

    commands = _subcommands()

    def choices(command, dest):
        return tuple(next(a for a in commands[command]._actions if a.dest == dest).choices)

    assert commands["eval"].get_default("data_test") == Options().data_test  # one default, the Options one
    assert choices("train", "preset") == tuple(PRESETS) and choices("train", "progress") == PROGRESS_MODES
    assert choices("export", "format") == tuple(FORMATS) and choices("eval", "engine") == MINDIR_ENGINES
    assert choices("upscale", "alpha") == ALPHA_MODES and choices("eval", "conv_algorithm") == CONV_ALGORITHMS


def test_add_flag_spellings():
    parser = argparse.ArgumentParser()
    flags.add_flag(parser, "--foo_bar")
    flags.add_flag(parser, "--baz-qux")
    flags.add_flag(parser, "--plain")
    assert [a.option_strings for a in parser._actions[1:]] == [
        ["--foo_bar", "--foo-bar"],
        ["--baz-qux", "--baz_qux"],
        ["--plain"],
    ]
    assert vars(parser.parse_args(["--foo-bar", "1", "--baz_qux", "2"])) == {
        "foo_bar": "1",
        "baz_qux": "2",
        "plain": None,
    }
