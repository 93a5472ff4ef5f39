"""Options files: the command line over a file over the defaults (``detect --settings``, ``serve --config``).

A file maps options to values, keyed by the long option name without its dashes (``merge-thr`` or
``merge_thr``); each value goes through the option's own parser and choices, so ``conf: 2`` is refused
exactly like ``--conf 2``. An option that takes several values takes a list (a single value is a list
of one). Paths in a file are read relative to the current folder, as on the command line. The keys a
command's file may hold are the ones it names when it calls :func:`defer_defaults`; its other options
stay on the command line, and a file that sets them is refused rather than half obeyed.

Formats: YAML, read with PyYAML (the serve extra). A command that accepts JSON too reads a file whose
first non-blank character is ``{`` with the json module, so a lean install without PyYAML reads it;
such a command also reads eval's best_detect.json, the sweep's record, through its ``detect_settings``.

Precedence: options given on the command line, then the file, then the defaults. To tell the first
from the last, :func:`defer_defaults` records each option's default and replaces it by SUPPRESS, so a
parse holds only what was given; :func:`resolve_options` fills in the rest.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..files import parse_yaml_mapping, read_text_file

# Where a parser keeps its OptionsFile (set_defaults), for resolve_options to find in the parse.
SPEC_DEST = "_options_file"


class ConfigError(ValueError):
    """A problem with an options file or the options, reported in one line (exit code 2)."""


@dataclass(frozen=True)
class OptionsFile:
    """How one command reads its options file, and the defaults under it.

    Attributes:
        option: The option naming the file, e.g. ``--settings``; its dest holds the file's path.
        noun: What the file's keys are, in the refusal of a command-line-only key
            (``'out' is not a detection setting``).
        actions: dest -> argparse action of each option the file may set: its parser and choices
            check the file's values.
        defaults: dest -> the default each of those options had before it was replaced by SUPPRESS.
        command_line_only: dest -> how the command line writes each of the command's other options
            (``--out``, ``SOURCE``): refused in a file, with a hint.
        json: Read a file starting with ``{`` as JSON (no PyYAML needed), and eval's sweep record.
        last_spelling_wins: When a key comes in both spellings (``frame-stride`` and
            ``frame_stride``), the later one wins; otherwise the file is refused.
    """

    option: str
    noun: str
    actions: Mapping[str, argparse.Action]
    defaults: Mapping[str, object]
    command_line_only: Mapping[str, str]
    json: bool = False
    last_spelling_wins: bool = False

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")

    def known_keys(self) -> str:
        return ", ".join(sorted(k.replace("_", "-") for k in self.actions))


def defer_defaults(
    parser: argparse.ArgumentParser,
    settable: Mapping[str, argparse.Action],
    *,
    option: str,
    noun: str,
    json: bool = False,
    last_spelling_wins: bool = False,
) -> OptionsFile:
    """Let ``option`` name a file of the ``settable`` options, under the command line and over the defaults.

    Each settable option's default is recorded and replaced by SUPPRESS, so a parse yields only what
    was given; the help lines state their defaults in words, so ``--help`` still shows the real ones.
    The returned spec is stored on the parser, where :func:`resolve_options` finds it.

    Args:
        parser: The command's parser, with every option added.
        settable: dest -> action of the options a file may set.
        option: The option naming the file (``--settings``).
        noun: What the file's keys are (``detection setting``).
        json: Also read JSON files, and eval's sweep record.
        last_spelling_wins: See :class:`OptionsFile`.

    Returns:
        The OptionsFile, also set as the parser's default under ``_options_file``.
    """
    defaults = {}
    for dest, action in settable.items():
        defaults[dest] = action.default
        action.default = argparse.SUPPRESS
    command_line_only = {
        x.dest: x.option_strings[-1] if x.option_strings else str(x.metavar or x.dest)
        for x in parser._actions  # argparse has no public way to list a parser's options
        if x.dest not in settable and x.dest != "help"
    }
    spec = OptionsFile(option, noun, dict(settable), defaults, command_line_only, json, last_spelling_wins)
    parser.set_defaults(**{SPEC_DEST: spec})
    return spec


def resolve_options(a: argparse.Namespace) -> argparse.Namespace:
    """Options given on the command line, over the options file, over the defaults.

    Args:
        a: What a parser prepared by :func:`defer_defaults` returned: only the settable options
            given on the command line, the file option (its path, or None) and the OptionsFile.

    Returns:
        A new namespace with every settable option set, and the parse's other attributes.

    Raises:
        ConfigError: the file is unreadable, not a mapping, has a key that is not a settable
            option, or a value its option would refuse.
    """
    spec: OptionsFile = getattr(a, SPEC_DEST)
    merged = dict(spec.defaults)
    path = vars(a).get(spec.dest)
    if path:
        merged.update(read_options_file(path, spec))
    merged.update({k: v for k, v in vars(a).items() if k in spec.defaults})
    return argparse.Namespace(**{**vars(a), **merged})


def read_options_file(path: str | Path, spec: OptionsFile) -> dict[str, object]:
    """The file's options, each checked by its option's parser: dest -> value.

    Raises:
        ConfigError: as :func:`resolve_options`.
    """
    where = f"{spec.option} {path}"
    data = load_mapping(path, spec)
    if spec.json and "detect_config" in data and "detect_settings" in data:
        # eval's best_detect.json: a record of the sweep whose detect_settings are the chosen options.
        data = data["detect_settings"]
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where}: detect_settings: expected a mapping of option names to values, "
                f"found {type(data).__name__}"
            )
    out: dict[str, object] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in spec.command_line_only:
            raise ConfigError(
                f"{where}: {key!r} is not a {spec.noun}: give {spec.command_line_only[dest]} "
                f"on the command line; a {spec.dest} file holds: {spec.known_keys()}"
            )
        if dest not in spec.actions:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of: {spec.known_keys()}")
        if dest in out and not spec.last_spelling_wins:
            raise ConfigError(
                f"{where}: {dest.replace('_', '-')!r} given twice (as '-' and '_' spellings); "
                "expected it once"
            )
        out[dest] = convert(spec.actions[dest], str(key), value, where)
    return out


def convert(action: argparse.Action, key: str, value: object, source: str) -> object:
    """A file's value for one option, through the option's own parser and choices.

    Args:
        action: The option's argparse action.
        key: The key as the file spells it, for the message.
        value: What the file holds: a scalar, or a list for an option of several values.
        source: Where the value comes from, e.g. ``--config serve.yaml``.

    Raises:
        ConfigError: the value the option would refuse, named with its key.
    """
    where = f"{source}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value

    def one(v: object) -> object:
        if isinstance(v, (dict, list)) or v is None:
            raise ConfigError(f"{where}: expected a single value, found {v!r}")
        text = str(v).lower() if isinstance(v, bool) else str(v)
        try:
            out = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if action.choices is not None and out not in action.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, action.choices))}, found {v!r}")
        return out

    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"{where}: expected at least one value, found an empty list")
        return [one(v) for v in values]
    return one(value)


def load_mapping(path: str | Path, spec: OptionsFile) -> dict:
    """The mapping in a YAML file (or a JSON one, starting with ``{``, where the spec accepts JSON).

    Raises:
        ConfigError: unreadable, not text, not valid YAML or JSON, or not a mapping.
    """
    where = f"{spec.option} {path}"
    formats = "YAML or JSON" if spec.json else "YAML"
    try:
        text = read_text_file(path, formats, spec.option)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if spec.json and text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
        return data  # text starting with "{" that parses is a JSON object
    install = "part of the serve extra (pip install 'edgetile[serve]')" + (
        "; a JSON settings file needs nothing more" if spec.json else ""
    )
    try:
        data = parse_yaml_mapping(text, where, "option names to values", install)
    except (ImportError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return data
