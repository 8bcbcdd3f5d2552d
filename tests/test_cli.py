"""The main job's flags, generated from the TrainConfig fields (agents.cli)."""
import argparse
import dataclasses

import pytest

from agents import losses
from agents.cli import build_parser, flag_name
from agents.config import EXPLICIT_NONE, RESUME_MUTABLE, TrainConfig, config_from_args

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def field_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions, less --help."""
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_every_field_has_exactly_one_flag_named_after_it():
    actions = field_actions(build_parser())
    assert sorted(a.dest for a in actions) == sorted(FIELDS)
    assert all(flag_name(a.dest) in a.option_strings for a in actions)
    assert all(a.default is None for a in actions)  # the preset supplies what is not given


def test_every_flag_has_a_help_line():
    for action in field_actions(build_parser()):
        assert action.help and action.help.strip() and "\n" not in action.help, action.dest


def test_algo_accepts_a_loss_registered_before_the_parser_is_built(monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "dummy_loss", losses.LOSSES["latent_ppo"])
    assert parse("--algo", "dummy_loss").algo == "dummy_loss"
    monkeypatch.delitem(losses.LOSSES, "dummy_loss")
    with pytest.raises(SystemExit):
        parse("--algo", "dummy_loss")  # read when the parser is built, not at import


def test_an_unknown_algo_exits_2_and_lists_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--algo", "no_such_loss")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'no_such_loss'" in err
    assert all(name in err for name in losses.LOSSES)


@pytest.mark.parametrize("flag, word, field", [("--attn-dim", "d", "attn_dim"),
                                               ("--logstd-bound", "none", "logstd_bound")])  # fmt: skip
def test_a_none_word_sets_the_field_to_none(flag, word, field):
    args = parse("--preset", "voc-fcn-r50", flag, word)  # the preset has attn_dim 512, logstd_bound 4.0
    assert getattr(args, field) is EXPLICIT_NONE
    assert getattr(config_from_args(args), field) is None


def test_class_weights_are_comma_separated_floats():
    args = parse("--class-weights", "1,5")
    assert args.class_weights == (1.0, 5.0)
    assert config_from_args(args).class_weights == (1.0, 5.0)


def test_reward_weights_round_trip_into_the_config():
    assert config_from_args(parse("--reward-weights", "1,0,0,0")).reward_weights == (1.0, 0.0, 0.0, 0.0)


def test_no_augment_turns_augmentation_off():
    args = parse("--preset", "voc-fcn-r50", "--no-augment")  # the preset augments
    assert args.augment is False and config_from_args(args).augment is False


def test_eval_samples_is_an_alias_of_val_size():
    args = parse("--eval-samples", "7")
    assert args.val_size == 7 and config_from_args(args).val_size == 7


@pytest.mark.parametrize(
    "flag, text, field, value",
    [("--dataset", "digits", "dataset", "digits"), ("--val-split", "val", "val_split", "val"),
     ("--policy-pool", "2", "policy_pool", 2), ("--boundary-tolerance", "3", "boundary_tolerance", 3),
     ("--momentum", "0.5", "momentum", 0.5), ("--poly-power", "0.7", "poly_power", 0.7)],
)  # fmt: skip
def test_the_formerly_missing_flags_reach_the_config(flag, text, field, value):
    args = parse("--preset", "voc-fcn-r50", flag, text)
    assert getattr(args, field) == value
    assert getattr(config_from_args(args), field) == value


def test_sync_bn_and_check_data_are_flags_and_only_check_data_may_change_on_resume():
    cfg = config_from_args(parse("--sync-bn", "--check-data"))
    assert cfg.sync_bn is True and cfg.check_data is True
    assert "check_data" in RESUME_MUTABLE and "sync_bn" not in RESUME_MUTABLE


def test_a_bad_number_is_an_argparse_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--batch-size", "abc")
    assert exc.value.code == 2
    assert "argument --batch-size: invalid int value: 'abc'" in capsys.readouterr().err
