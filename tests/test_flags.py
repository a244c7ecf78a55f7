"""``bigseer.flags``: each config field described once, where it is defined, and its flag built from it, for
``bigseer pretrain`` and ``bigseer eval`` alike."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bigseer.commands.pretrain import add_arguments as pretrain_arguments
from bigseer.commands.pretrain import config_from_args as pretrain_config
from bigseer.config import PretrainConfig
from bigseer.downstream.config import EvalConfig
from bigseer.downstream.config import add_arguments as eval_arguments
from bigseer.downstream.config import config_from_args as eval_config


def _parser(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add(parser)
    return parser


@pytest.mark.parametrize("cls, add", [(PretrainConfig, pretrain_arguments), (EvalConfig, eval_arguments)])
def test_every_field_is_described_once_and_is_its_flag(cls, add) -> None:
    parser = _parser(add)
    dests: dict[str, argparse.Action] = {}
    for a in parser._actions:
        dests.setdefault(a.dest, a)  # the field's own flag comes first (launchers add aliases after)
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no description"
        assert f.name in dests, f"{cls.__name__}.{f.name} has no flag"
        assert f.metadata["help"].replace("%", "%%") in dests[f.name].help or \
            dests[f.name].option_strings[0].startswith("--no_"), f.name


def test_eval_flags_give_the_config_the_user_wrote() -> None:
    parser = _parser(eval_arguments)
    cfg = eval_config(parser.parse_args([
        "--mode", "linear", "--data", "d", "--shots", "1", "5", "--fractions", "--crop_scale", "0.2", "1",
        "--no_head_bn", "--resume", "--color_jitter", "0.3", "--blur_prob", "0.1", "--lr_milestones", "3", "6",
        "--cpu"]))
    assert cfg == EvalConfig(mode="linear", data="d", shots=[1, 5], fractions=[], crop_scale=[0.2, 1.0],
                             head_bn=False, resume="latest", jitter_strength=0.3, blur_p=0.1, lr_milestones=[3, 6],
                             cpu=True)
    # flags not given keep the dataclass's defaults (None hyperparameters: the mode's, at resolve time)
    assert eval_config(parser.parse_args(["--data", "d"])) == EvalConfig(data="d")
    assert eval_config(parser.parse_args(["--data", "d", "--model", "m"])).resolved().lr == 0.0125


def test_eval_mode_is_positional_for_bigseer_eval() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    eval_arguments(parser, with_mode=False)
    assert eval_config(parser.parse_args(["knn", "--data", "d"])).mode == "knn"


@pytest.mark.parametrize("argv", [["--data", "d", "--layer", "res9"], ["--data", "d", "--resume", "maybe"],
                                  ["--data", "d", "--crop_scale", "0.2"], ["--layer", "res4"]])
def test_eval_flags_refuse_bad_values(argv) -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parser(eval_arguments).parse_args(argv)


def test_pretrain_tuple_flags_are_comma_separated() -> None:
    cfg = pretrain_config(_parser(pretrain_arguments).parse_args(["--head_dims", "8,4", "--crop_ratio", "1,1",
                                                                  "--no_export", "--init_head"]))
    assert cfg.head_dims == (8, 4) and cfg.crop_ratio == (1.0, 1.0) and not cfg.export and cfg.init_head
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parser(pretrain_arguments).parse_args(["--head_dims", "8,x"])
