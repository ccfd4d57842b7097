"""The CLI's model options, generated from RunConfig's fields (`qwenkit.config.settings()`).

Every verb that takes model settings calls `add_model_options(parser)`: one flag per field in
its one spelling (--n-ctx), the older spellings (llama_cpp.server's --n_ctx, llama.cpp's -c,
the recipe's --cache_type_k) accepted but not listed, and `--config FILE` (a saved RunConfig,
as the tuning panel and `RunConfig.save` write it). `config_from_args(args)` turns them back
into a RunConfig: RunConfig's defaults, then the verb's, then the file, then the flags given.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping

from qwenkit.config import RunConfig, Setting, settings, spelling_note
from qwenkit.errors import ConfigError

__all__ = ["add_model_options", "config_from_args", "given_settings"]

# namespace attributes the options leave besides one per field
_VERB_DEFAULTS = "_setting_defaults"   # the verb's own defaults (bench: n_batch 2048)
_SPELLINGS = "_setting_spellings"      # (flag, text, field) of each model flag given, for notes


def _record(namespace: argparse.Namespace, flag: str | None, text: Any, name: str) -> None:
    # a new list per parse: a default list on the parser would be shared between parses
    setattr(namespace, _SPELLINGS, [*(getattr(namespace, _SPELLINGS, None) or []), (flag, text, name)])


class _SettingAction(argparse.Action):
    """Stores a field's value parsed by its Setting (so `--type-k 8`, `--flash-attn on` and the
    recipe's spellings read as RunConfig reads them); a bad value is argparse's usage error."""

    def __init__(self, option_strings: list[str], dest: str, setting: Setting, **kw: Any):
        self.setting = setting
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            value = self.setting.parse(values, option_string)
        except ConfigError as e:
            raise argparse.ArgumentError(self, f"{e.problem}" + (f" ({e.fix})" if e.fix else "")) from None
        setattr(namespace, self.dest, value)
        _record(namespace, option_string, values, self.setting.name)


class _NegationAction(argparse.Action):
    """A value-less flag that sets a bool field false (--no-flash-attn)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any):
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, False)
        _record(namespace, option_string, "false", self.dest)


def _metavar(s: Setting) -> str:
    if s.choices:
        return "{" + ",".join(s.choices) + "}"
    return {bool: "BOOL", int: "N"}.get(s.kind, s.name.upper())


def _help(s: Setting, verb_defaults: Mapping[str, Any], verb_help: Mapping[str, str]) -> str:
    text = verb_help.get(s.name, s.help)
    if s.name in verb_defaults:
        default: Any = s.render(verb_defaults[s.name])
    elif s.default_text:
        default = s.default_text
    elif s.default not in (None, dataclasses.MISSING):
        default = s.render(s.default)
    else:
        default = None                 # None: the help says who decides
    if default is not None and s.name not in verb_help:
        text += f" (default: {default})"
    shown = [a for a in s.aliases if a != f"--{s.name}"]  # llama_cpp.server's --field_name goes unsaid
    shown += [s.negation] if s.negation else []
    if shown:
        text += f" [also {', '.join(shown)}]"
    return text.replace("%", "%%")  # argparse %-formats help


def add_model_options(parser: argparse.ArgumentParser, *, defaults: Mapping[str, Any] | None = None,
                      help: Mapping[str, str] | None = None) -> None:
    """Add `--config FILE` and one option per RunConfig field to a verb's parser.

    defaults: the verb's own defaults (below --config and the flags); help: the verb's own
    help text for some fields (replaces the field's)."""
    verb_defaults, verb_help = dict(defaults or {}), dict(help or {})
    g = parser.add_argument_group(
        "model settings (RunConfig)",
        "--config FILE sets them all; flags given override it. llama_cpp.server's spellings "
        "(--n_ctx 8192, --flash_attn true) and the recipe's (--cache_type_k q8_0) work too.")
    g.add_argument("--config", metavar="FILE",
                   help="a saved RunConfig (JSON, from the tuning panel or RunConfig.save)")
    for s in settings():
        g.add_argument(s.flag, dest=s.name, default=None, metavar=_metavar(s), action=_SettingAction,
                       setting=s, help=_help(s, verb_defaults, verb_help))
        if s.aliases:
            g.add_argument(*s.aliases, dest=s.name, default=None, metavar=_metavar(s),
                           action=_SettingAction, setting=s, help=argparse.SUPPRESS)
        if s.negation:
            g.add_argument(s.negation, dest=s.name, default=None, action=_NegationAction,
                           help=argparse.SUPPRESS)
    parser.set_defaults(**{_VERB_DEFAULTS: verb_defaults})


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The fields set by flags on this command line (not by --config or a default)."""
    return {s.name: getattr(args, s.name) for s in settings() if getattr(args, s.name, None) is not None}


def config_from_args(args: argparse.Namespace, **defaults: Any) -> tuple[RunConfig, list[str]]:
    """RunConfig from RunConfig's defaults, the verb's (`add_model_options(defaults=)`, then
    `defaults` here), `--config FILE`, and the flags given; the model defaults to the kit's
    small default model. Returns (config, notes on translated spellings)."""
    values: dict[str, Any] = {**getattr(args, _VERB_DEFAULTS, {}), **defaults}
    if getattr(args, "config", None):
        values.update(RunConfig.load(args.config).to_dict())
    values.update(given_settings(args))
    if "model" not in values:
        from qwenkit.models import default_model_path
        values["model"] = str(default_model_path())
    notes = [n for flag, text, name in getattr(args, _SPELLINGS, None) or []
             if flag and (n := spelling_note(flag, name, text))]
    return RunConfig.from_dict(values), notes
