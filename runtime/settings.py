"""Detection settings files: ``edgetile detect --settings FILE``.

A settings file maps detection options to values, keyed by the long option name without its dashes
(``merge-thr`` or ``merge_thr``): the keys ``edgetile serve --config`` reads, so the best_detect.yaml
that ``edgetile eval --sweep`` writes works for both. Each value goes through the option's own parser
(serve's ``_convert``), so ``conf: 2`` is refused exactly like ``--conf 2``.

Keys: the options of :func:`edgetile.runtime.cli.add_detect_options` -- model, model-weights,
backend, tile, overlap, full-frame, batch, conf, iou, merge, merge-thr, tta. Model paths are read
relative to the current folder, as on the command line (and as serve reads them). What a run reads
and writes (sources, out, save-vis, the geo outputs) and how it reports or reads ahead stay on the
command line: a file that sets them is refused rather than half obeyed.

Formats: a file whose first non-blank character is ``{`` is JSON, read with the json module, so a
lean install without PyYAML reads it; anything else is YAML, which needs PyYAML (the serve extra).
eval's best_detect.json, the sweep's record, is read through its ``detect_settings``.

Precedence: options given on the command line, then the file, then the defaults. To tell the first
from the last, detect's parser records each setting's default and replaces it by SUPPRESS, as
serve's parser does; :func:`resolve` fills in what was not given.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DetectSettings:
    """What a settings file may set, and the defaults under it.

    Attributes:
        actions: dest -> argparse action of each detection option: its parser and choices check the
            file's values.
        defaults: dest -> the default each of those options had before it was replaced by SUPPRESS.
        command_line_only: dest -> how the command line writes each of the command's other options
            (``--out``, ``SOURCE``): refused in a file, with a hint.
    """

    actions: Mapping[str, argparse.Action]
    defaults: Mapping[str, object]
    command_line_only: Mapping[str, str]

    def known_keys(self) -> str:
        return ", ".join(sorted(k.replace("_", "-") for k in self.actions))


def defer_defaults(
    actions: Mapping[str, argparse.Action], others: Iterable[argparse.Action]
) -> DetectSettings:
    """Record each action's default and replace it by SUPPRESS, so a parse yields only what was given.

    The help lines state their defaults in words, so ``--help`` still shows the real ones.

    Args:
        actions: dest -> action of the options a settings file may set.
        others: The command's other options (settings among them are skipped).

    Returns:
        The DetectSettings that :func:`resolve` needs; store it on the parser with set_defaults.
    """
    defaults = {}
    for dest, action in actions.items():
        defaults[dest] = action.default
        action.default = argparse.SUPPRESS
    command_line_only = {
        x.dest: x.option_strings[-1] if x.option_strings else str(x.metavar or x.dest)
        for x in others
        if x.dest not in actions and x.dest != "help"
    }
    return DetectSettings(dict(actions), defaults, command_line_only)


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """Options given on the command line, over the ``--settings`` file, over the defaults.

    Args:
        a: What detect's parser returned: only the detection options given on the command line,
            plus ``settings`` (the file, or None) and ``_settings`` (the DetectSettings).

    Returns:
        A new namespace with every detection option set.

    Raises:
        ConfigError: the file is unreadable, not a mapping, has a key that is not a detection
            setting, or a value its option would refuse.
    """
    spec: DetectSettings = a._settings
    merged = dict(spec.defaults)
    if getattr(a, "settings", None):
        merged.update(read_settings(a.settings, spec))
    merged.update({k: v for k, v in vars(a).items() if k in spec.defaults})
    return argparse.Namespace(**{**vars(a), **merged})


def read_settings(path: str | Path, spec: DetectSettings) -> dict[str, object]:
    """The file's settings, each checked by its option's parser: dest -> value.

    Raises:
        ConfigError: as :func:`resolve`.
    """
    from .serve.config import ConfigError, _convert

    where = f"--settings {path}"
    data = load_settings(path)
    if "detect_config" in data and "detect_settings" in data:
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
                f"{where}: {key!r} is not a detection setting: give {spec.command_line_only[dest]} "
                f"on the command line; a settings file holds: {spec.known_keys()}"
            )
        if dest not in spec.actions:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of: {spec.known_keys()}")
        if dest in out:
            raise ConfigError(
                f"{where}: {dest.replace('_', '-')!r} given twice (as '-' and '_' spellings); "
                "expected it once"
            )
        out[dest] = _convert(spec.actions[dest], str(key), value, where)
    return out


def load_settings(path: str | Path) -> dict:
    """The mapping in a JSON (first character ``{``) or YAML file; anything else is a ConfigError."""
    from .serve.config import ConfigError, load_yaml

    where = f"--settings {path}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"--settings: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: expected a UTF-8 text file of YAML or JSON, found binary data") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    else:
        try:
            import yaml  # noqa: F401  (load_yaml's own message would not say that JSON needs nothing)
        except ImportError:
            raise ConfigError(
                f"{where}: reading YAML needs PyYAML, part of the serve extra (pip install "
                "'edgetile[serve]'); a JSON settings file needs nothing more"
            ) from None
        data = load_yaml(path, option="--settings")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping of option names to values, found {type(data).__name__}"
        )
    return data
