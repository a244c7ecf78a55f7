"""Config dataclasses as command-line flags: each field is described once, where it is defined (:func:`doc`),
and becomes the flag of the same name (:func:`add_flags`); its type, list form and choices come from the
field's annotation and metadata. ``bigseer pretrain`` (:class:`bigseer.config.PretrainConfig`) and ``bigseer
eval`` (:class:`bigseer.downstream.config.EvalConfig`) build their flags here.

Every flag defaults to ``None`` (not given), so that a command knows what the user chose
(:func:`chosen_values`) and the dataclass keeps the one default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field
from typing import Any


def doc(default: Any, help: str, *, choices: tuple[str, ...] | None = None,  # noqa: A002 - argparse's name
        aliases: tuple[str, ...] = (), const: Any = None, nargs: int | None = None, required: bool = False) -> Any:
    """A config field with its one description (``metadata["help"]``; the ``--help`` text and the comments of
    written configs come from it). ``choices``: the values the flag accepts; ``aliases``: other flag names
    (old spellings); ``const``: the value of the flag given alone; ``nargs``: a fixed count for a list field
    (else any count); ``required``: the flag must be given. A list default is copied per instance."""
    meta = {"help": help, "choices": choices, "aliases": aliases, "const": const, "nargs": nargs,
            "required": required}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _comma_separated(kind: type) -> Any:
    """argparse type: ``"a,b"`` -> a tuple of ``kind``."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def _plain(annotation: Any) -> tuple[Any, Any]:
    """``X | None`` -> (X, None); ``list[int]`` -> (list, int); ``tuple[float, ...]`` -> (tuple, float)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return origin, typing.get_args(annotation)[0]
    return annotation, None


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
              sections: dict[str, tuple[str, ...]] | None = None) -> None:
    """One ``--NAME`` flag per field of the dataclass ``cls`` (except ``skip``), in argument groups named by
    ``sections`` (section -> field names) when given. bool fields: ``--NAME`` (default False) or ``--no_NAME``
    (default True); tuples: comma-separated (``--head_dims 512,256``); lists: space-separated (``--shots 1 5``)."""
    hints = typing.get_type_hints(cls)
    owner = {name: section for section, names in (sections or {}).items() for name in names}
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        section = owner.get(f.name)
        where = parser if section is None else groups.setdefault(section, parser.add_argument_group(section))
        _add_flag(where, f, hints[f.name])


def _add_flag(where: Any, f: dataclasses.Field, annotation: Any) -> None:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
    helptext = meta.get("help", "").replace("%", "%%")
    names = [f"--{f.name}", *meta.get("aliases", ())]
    kind, item = _plain(annotation)
    if kind is bool:
        if default:
            where.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", default=None,
                               help=f"turn off: {helptext}" if helptext else f"disable {f.name}")
        else:
            where.add_argument(*names, dest=f.name, action="store_true", default=None,
                               help=helptext or f"enable {f.name}")
        return
    if default is None or default == "":
        shown = ""
    elif kind is tuple:
        shown = f" (default {','.join(f'{v:.4g}' for v in default)})"
    else:
        shown = f" (default {' '.join(map(str, default)) if kind is list else default})"
    if meta.get("const") is not None:
        shown += f" (--{f.name} alone: {meta['const']})"
    kw: dict[str, Any] = dict(dest=f.name, default=None, help=f"{helptext}{shown}")
    if meta.get("choices"):
        kw["choices"] = meta["choices"]
    if meta.get("required"):
        kw["required"] = True
    if meta.get("const") is not None:
        kw.update(nargs="?", const=meta["const"])
    if kind is tuple:
        kw.update(type=_comma_separated(item), metavar="N,N")
    elif kind is list:
        kw.update(type=item, nargs=meta.get("nargs") or "*")
    else:
        kw["type"] = kind
    where.add_argument(*names, **kw)


def chosen_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user gave as flags (parsed by :func:`add_flags`)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
