"""The main job's command line, generated from the :class:`agents.config.TrainConfig` fields.

Every field is one flag, ``--`` + its name with ``_`` -> ``-`` (``lambda_kl`` -> ``--lambda-kl``), so no knob can be
left without one.  A field's ``metadata`` (see ``agents.config._knob``) gives the flag's help, argument group,
valid choices, the words that set it to None, and any alias; its type annotation gives the parser:

- ``bool``: ``--name`` / ``--no-name`` (:class:`argparse.BooleanOptionalAction`);
- ``int``, ``float``, ``str``: that type; ``tuple[float, ...]`` / ``tuple[int, ...]``: comma-separated numbers;
- ``X | None``: ``X``, or one of the field's ``none_words`` -> :data:`agents.config.EXPLICIT_NONE`;
- ``reward_weights``: :func:`segbandit.rewards.parse_reward_weights` (``1,1,0,1``).

Every default is None, so :func:`agents.config.config_from_args` can tell a given flag from one left to the preset.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from agents.config import EXPLICIT_NONE, GROUPS, TrainConfig
from segbandit.rewards import parse_reward_weights

Parse = Callable[[str], Any]

DEFAULT_DESCRIPTION = (
    "Co-train a segmentor and a latent-space Gaussian policy (Eq. 6). No arguments: digits on CPU."
)
EPILOG = "Unset flags take the preset's value (agents.config.PRESETS)."


def flag_name(field_name: str) -> str:
    """The flag of TrainConfig field ``field_name``: ``"lambda_kl"`` -> ``"--lambda-kl"``."""
    return "--" + field_name.replace("_", "-")


def _floats(text: str) -> tuple[float, ...]:
    """argparse type: ``"1,5,5"`` -> ``(1.0, 5.0, 5.0)``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    """argparse type: ``"16,8,4,1"`` -> ``(16, 8, 4, 1)``."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _reward_weights(text: str) -> dict[str, float]:
    """argparse type: ``"1,1,0,1"`` -> ``{"iou": 1.0, "dice": 1.0, "ce": 0.0, "boundary": 1.0}``."""
    try:
        return parse_reward_weights(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# Fields whose text has its own parser instead of the one their type annotation implies.
FIELD_PARSERS: dict[str, Parse] = {"reward_weights": _reward_weights}

# The parser of each supported (non-None) annotation, and how its error message names the expected text.
_TYPE_PARSERS: dict[Any, Parse] = {int: int, float: float, str: str, tuple[float, ...]: _floats, tuple[int, ...]: _ints}
_EXPECTED: dict[Parse, str] = {int: "an integer", float: "a number", str: "a string", _floats: "comma-separated numbers",
                               _ints: "comma-separated integers"}


def _or_none(parse: Parse, words: tuple[str, ...]) -> Parse:
    """argparse type: ``parse(text)``, or :data:`EXPLICIT_NONE` for one of ``words`` (any case)."""
    expected = _EXPECTED.get(parse, "a value")

    def parse_or_none(text: str) -> Any:
        if text.lower() in words:
            return EXPLICIT_NONE
        try:
            return parse(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"expected {expected} or one of {', '.join(words)}, got {text!r}"
            ) from None

    return parse_or_none


def _strip_optional(hint: Any) -> Any:
    """``X`` for the annotation ``X | None`` (or ``Optional[X]``), else ``hint`` itself."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    members = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(members) != 1:
        raise TypeError(f"a flag needs one type or one type | None, got {hint!r}")
    return members[0]


def _value_parser(name: str, hint: Any) -> Parse:
    """The argparse ``type`` of field ``name`` with (non-None) annotation ``hint``."""
    if name in FIELD_PARSERS:
        return FIELD_PARSERS[name]
    if hint not in _TYPE_PARSERS:
        raise TypeError(f"TrainConfig.{name}: no flag parser for the type {hint!r}")
    return _TYPE_PARSERS[hint]


def _resolve_choices(spec: Any) -> list[str] | None:
    """The valid values from a field's ``choices`` metadata: a tuple, or a callable read now (registries)."""
    if spec is None:
        return None
    return list(spec() if callable(spec) else spec)


def _field_metadata(field: dataclasses.Field) -> dict[str, Any]:
    """The flag metadata of ``field``; a field declared without it is a TypeError (its flag would go missing)."""
    meta = dict(field.metadata)
    if "help" not in meta or "group" not in meta:
        raise TypeError(f"TrainConfig.{field.name} has no flag metadata: declare it with agents.config._knob(...)")
    return meta


def _argument_kwargs(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """``add_argument`` keywords for ``field`` (annotation ``hint``): dest, default None, help, type/action, choices."""
    meta = _field_metadata(field)
    kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": meta["help"].replace("%", "%%")}
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    parse = _value_parser(field.name, _strip_optional(hint))
    none_words = tuple(meta.get("none_words") or ())
    kwargs["type"] = _or_none(parse, none_words) if none_words else parse
    choices = _resolve_choices(meta.get("choices"))
    if choices is not None:
        kwargs["choices"] = choices
    return kwargs


def build_parser(prog: str = "train_voc_bandit.py", description: str | None = None) -> argparse.ArgumentParser:
    """The main job's parser: one flag per TrainConfig field, in the field's argument group.

    ``description`` None = :data:`DEFAULT_DESCRIPTION`.  Registry choices (presets, models, losses, ...) are read
    here, so a name registered before this call is accepted.  Every default is None: the preset fills in the rest
    (:func:`agents.config.config_from_args`).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=DEFAULT_DESCRIPTION if description is None else description, epilog=EPILOG
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kwargs = _argument_kwargs(field, hints[field.name])
        aliases = tuple(field.metadata.get("aliases") or ())
        groups[field.metadata["group"]].add_argument(flag_name(field.name), *aliases, **kwargs)
    return parser


EXIT_DATA_ERROR = 2  # bad flags or data (argparse's own code for bad flags)
EXIT_NONFINITE = 3  # too many non-finite steps in a row
EXIT_WRITE_ERROR = 4  # a file could not be written (a full disk)


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a script's ``main(argv)``; user errors end as one ``error: ...`` line on stderr and an exit code."""
    import errno
    import sys

    from agents.atomic import WriteError
    from agents.datasets import one_line
    from agents.trainer import NonFiniteError
    from segbandit.errors import DataError

    try:
        main(argv)
    except (DataError, NonFiniteError, WriteError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        if isinstance(err, DataError):
            return EXIT_DATA_ERROR
        return EXIT_NONFINITE if isinstance(err, NonFiniteError) else EXIT_WRITE_ERROR
    except OSError as err:  # a full disk outside a checkpoint (a CSV row, a figure): the file it could not write
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {err.filename or 'the output folder'}: {err.strerror}", file=sys.stderr, flush=True)
        return EXIT_WRITE_ERROR
    return 0


__all__ = ["DEFAULT_DESCRIPTION", "EPILOG", "EXIT_DATA_ERROR", "EXIT_NONFINITE", "EXIT_WRITE_ERROR", "FIELD_PARSERS",
           "build_parser", "flag_name", "run_cli"]
