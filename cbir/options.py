"""Options declared once: a config dataclass field carries its flag, help and validation.

A component's frozen config dataclass is the single declaration of its options::

    @dataclass(frozen=True)
    class ServerConfig:
        port: int = option(50051, help="0 = any free port", non_negative=True)
        batch: BatchConfig = nested(BatchConfig)

``add_options(parser, ServerConfig)`` generates the argparse flags (``--port``) from the fields,
walking into ``nested`` configs; ``build(ServerConfig, args)`` turns the parsed namespace back
into the config. The default shown by ``-h`` and used by the parser *is* the field's default, so
the two cannot drift. Every option also reads ``CBIR_<NAME>`` (``CBIR_PORT``), so Kubernetes
manifests can set it either way: flag > environment > default. Numbers are checked by the
parser (``positive`` / ``non_negative``), so a bad value exits 2 with one line before any work.

argparse stays the parser: it keeps ``-h``, exit code 2 and the existing flag names; this module
only writes the ``add_argument`` calls that used to be copied by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

KEY = "cbir_option"
NESTED = "cbir_nested"
# Namespace attribute listing the dests given on the command line (so a flag beats an
# environment value of another member of its mutually exclusive group).
SEEN = "_cbir_seen"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Spec:
    """How one field appears on the command line (the field's metadata under ``KEY``)."""

    help: str
    flag: str | None = None  # default: --field-name (--no-field-name for a bool that is True)
    aliases: tuple[str, ...] = ()  # more spellings of the flag, e.g. ("-k",)
    choices: Sequence[str] | None = None
    metavar: str | None = None
    positive: bool = False
    non_negative: bool = False
    scale: float = 1.0  # field value = flag value * scale (e.g. 0.001 for a --*-ms flag)
    required: bool = False
    mutex: str | None = None  # name of a mutually exclusive group
    env: str | None = None  # default: CBIR_ + the flag name in upper case


@dataclass(frozen=True)
class Option:
    """One generated flag: where its value goes (``path`` into the config) and its default."""

    path: tuple[str, ...]
    spec: Spec
    kind: type
    default: Any  # the field's default (field units), None when it has none

    @property
    def flag(self) -> str:
        if self.spec.flag:
            return self.spec.flag
        name = self.path[-1].replace("_", "-")
        return f"--no-{name}" if self.kind is bool and self.default is True else f"--{name}"

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return self.spec.env or "CBIR_" + self.dest.upper()

    @property
    def negated(self) -> bool:
        return self.kind is bool and self.flag.startswith("--no-")

    def to_flag(self, value: Any) -> Any:
        """Field units -> flag units (the default ``-h`` shows)."""
        if self.negated:
            return not value
        if value is None or self.spec.scale == 1.0:
            return value
        return value / self.spec.scale

    def to_field(self, value: Any) -> Any:
        if self.negated:
            return not value
        if value is None or self.spec.scale == 1.0:
            return value
        return self.kind(value * self.spec.scale)


def option(default: Any = MISSING, *, help: str, **spec: Any) -> Any:
    """A config field that is also a command-line option (keyword arguments: ``Spec``)."""
    meta = {KEY: Spec(help=help, **spec)}
    return dataclasses.field(default=default, metadata=meta)


def nested(factory: Callable[[], Any] | None = None) -> Any:
    """A config field holding another config whose options are generated too (no
    ``factory``: the field has no default and is always built from the options)."""
    if factory is None:
        return dataclasses.field(metadata={NESTED: True})
    return dataclasses.field(default_factory=factory, metadata={NESTED: True})


def _unwrap(hint: Any) -> type:
    """``int | None`` -> int; a plain type stays."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        raise TypeError(f"option type {hint} is not one type or None")
    return hint if isinstance(hint, type) else str


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None


def options_of(cls: type, base: Any = None, path: tuple[str, ...] = ()) -> Iterator[Option]:
    """Every option of ``cls`` and of its nested configs, in declaration order. ``base`` is the
    instance that supplies defaults (a nested field's default), else the fields' own."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = getattr(base, field.name) if base is not None else _field_default(field)
        if field.metadata.get(NESTED):
            yield from options_of(_unwrap(hints[field.name]), default, (*path, field.name))
        elif KEY in field.metadata:
            yield Option((*path, field.name), field.metadata[KEY], _unwrap(hints[field.name]),
                         default)


def _number(kind: type, spec: Spec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if spec.positive and not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if spec.non_negative and not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(opt: Option) -> Callable[[str], Any]:
    if opt.kind is bool:
        return _bool
    if opt.kind in (int, float):
        return _number(opt.kind, opt.spec)
    return str


class _Store(argparse.Action):
    """store / store_true that also records that the flag was given on the command line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        seen = set(getattr(namespace, SEEN, ()))
        setattr(namespace, SEEN, seen | {self.dest})


def _env_default(parser: argparse.ArgumentParser, opt: Option,
                 env: Mapping[str, str]) -> tuple[Any, bool]:
    """(default in flag units, whether the environment gave it); a bad value exits 2 now."""
    raw = env.get(opt.env)
    if raw is None:
        return opt.to_flag(opt.default), False
    try:
        value = _converter(opt)(raw)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"{opt.env}={raw!r}: {exc}")
    if opt.spec.choices is not None and value not in opt.spec.choices:
        parser.error(f"{opt.env}={raw!r}: choose from {', '.join(opt.spec.choices)}")
    return value, True


def _add_one(target: Any, opt: Option, default: Any, from_env: bool) -> None:
    extra = f" (env {opt.env})"
    if opt.kind is bool:
        target.add_argument(opt.flag, *opt.spec.aliases, dest=opt.dest, action=_Store, nargs=0,
                            const=True,
                            default=bool(default), help=opt.spec.help + extra)
        return
    target.add_argument(
        opt.flag, *opt.spec.aliases, dest=opt.dest, action=_Store, type=_converter(opt),
        default=default,
        choices=opt.spec.choices, metavar=opt.spec.metavar,
        required=opt.spec.required and not from_env and opt.spec.mutex is None,
        help=opt.spec.help + extra,
    )


def add_options(parser: argparse.ArgumentParser, cls: type,
                env: Mapping[str, str] | None = None) -> list[Option]:
    """Add a flag per option of ``cls`` (and its nested configs); returns the options."""
    env = os.environ if env is None else env
    opts = list(options_of(cls))
    defaults = {opt.dest: _env_default(parser, opt, env) for opt in opts}
    groups: dict[str, Any] = {}
    for opt in opts:
        if opt.spec.mutex and opt.spec.mutex not in groups:
            members = [o for o in opts if o.spec.mutex == opt.spec.mutex]
            required = any(o.spec.required for o in members) and not any(
                defaults[o.dest][1] for o in members)
            groups[opt.spec.mutex] = parser.add_mutually_exclusive_group(required=required)
        target = groups[opt.spec.mutex] if opt.spec.mutex else parser
        _add_one(target, opt, *defaults[opt.dest])
    return opts


def _values(cls: type, args: argparse.Namespace) -> dict[tuple[str, ...], Any]:
    """Field values by path; an environment value loses to a flag of its mutex group."""
    opts = list(options_of(cls))
    seen = set(getattr(args, SEEN, ()))
    given = {o.spec.mutex for o in opts if o.spec.mutex and o.dest in seen}
    values = {}
    for opt in opts:
        value = getattr(args, opt.dest)
        if opt.spec.mutex in given and opt.dest not in seen:
            value = opt.to_flag(opt.default)
        values[opt.path] = opt.to_field(value)
    return values


def _construct(cls: type, base: Any, path: tuple[str, ...],
               values: Mapping[tuple[str, ...], Any], overrides: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        where = (*path, field.name)
        dotted = ".".join(where)
        if dotted in overrides:
            kwargs[field.name] = overrides[dotted]
        elif field.metadata.get(NESTED):
            sub_base = getattr(base, field.name) if base is not None else _field_default(field)
            kwargs[field.name] = _construct(_unwrap(hints[field.name]), sub_base, where,
                                            values, overrides)
        elif where in values and values[where] is not None:
            kwargs[field.name] = values[where]
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def build(cls: type, args: argparse.Namespace, overrides: Mapping[str, Any] | None = None) -> Any:
    """The config ``cls`` from parsed ``args``; ``overrides`` (dotted field paths, e.g.
    ``{"searcher.expect": ...}``) supply what is not a plain option. An option left unset
    (None) keeps the field's default."""
    return _construct(cls, None, (), _values(cls, args), overrides or {})


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``-h`` shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            text += " (default: %(default)s)"
        return text
