"""The format-adapter registry: named converters from raw dataset rows to canonical rows, and format detection.

Adapters (one raw row -> one canonical row) are registered by name with :func:`register_adapter` and picked
automatically from the column names by :func:`detect_format`. The built-in ones live in :mod:`chatalign.data.adapters`
and are registered when the :mod:`chatalign.data` package is imported, which any import of one of its modules does
first, so every caller of :func:`get_adapter` and :func:`detect_format` sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from chatalign.data.schemas import check_schema


@dataclass(frozen=True)
class Adapter:
    """A named converter from one raw row format to canonical rows of ``schema``.

    ``required_columns`` entries are column names or tuples of alternatives (any one suffices). ``detect`` lists
    column sets; the adapter is auto-detected when all columns of one set are present and none of ``exclude`` is.
    ``emits`` names optional schema columns the adapter fills itself (others are copied from the source if present).
    Whole-dataset formats (OASST trees) set ``convert_dataset`` instead of ``convert``.
    """

    name: str
    schema: str
    convert: Callable[[Mapping], dict] | None
    required_columns: tuple = ()
    detect: tuple[frozenset[str], ...] = ()
    exclude: frozenset[str] = frozenset()
    emits: tuple[str, ...] = ()
    priority: int = 100
    description: str = ""
    passthrough: bool = False
    convert_dataset: Callable[..., list[dict]] | None = None

    def matches(self, column_names: Iterable[str]) -> bool:
        columns = set(column_names)
        if columns & self.exclude:
            return False
        return any(needed <= columns for needed in self.detect)

    def missing_columns(self, column_names: Iterable[str]) -> list[str]:
        columns = set(column_names)
        missing = []
        for needed in self.required_columns:
            options = (needed,) if isinstance(needed, str) else tuple(needed)
            if not columns.intersection(options):
                missing.append(" or ".join(f"'{o}'" for o in options))
        return missing


_ADAPTERS: dict[str, Adapter] = {}


def add_adapter(adapter: Adapter, replace: bool) -> Adapter:
    check_schema(adapter.schema)
    if adapter.name in _ADAPTERS and not replace:
        raise ValueError(f"adapter '{adapter.name}' is already registered (pass replace=True to override it)")
    _ADAPTERS[adapter.name] = adapter
    return adapter


def register_adapter(
    name: str,
    *,
    schema: str,
    required: Sequence = (),
    detect: Iterable[Iterable[str]] = (),
    exclude: Iterable[str] = (),
    emits: Sequence[str] = (),
    priority: int = 100,
    description: str | None = None,
    passthrough: bool = False,
    replace: bool = False,
):
    """Decorator registering ``fn(raw_row) -> canonical row`` under ``name``; fn raises InvalidRow for bad rows."""

    def decorator(fn: Callable[[Mapping], dict]) -> Callable[[Mapping], dict]:
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
        add_adapter(
            Adapter(
                name=name,
                schema=schema,
                convert=fn,
                required_columns=tuple(required),
                detect=tuple(frozenset(columns) for columns in detect),
                exclude=frozenset(exclude),
                emits=tuple(emits),
                priority=priority,
                description=doc,
                passthrough=passthrough,
            ),
            replace,
        )
        return fn

    return decorator


def unregister_adapter(name: str) -> None:
    """Remove a registered adapter (KeyError if unknown); mainly for plugins and tests that register their own."""
    del _ADAPTERS[name]


def get_adapter(name: str) -> Adapter:
    """The adapter registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset format '{name}' (known formats: {', '.join(list_adapters())})") from None


def _detection_order() -> list[Adapter]:
    order = {name: i for i, name in enumerate(_ADAPTERS)}
    return sorted(_ADAPTERS.values(), key=lambda a: (a.priority, order[a.name]))


def list_adapters(schema: str | None = None) -> list[str]:
    """Registered adapter names (optionally only those producing ``schema``), in auto-detection order."""
    return [a.name for a in _detection_order() if schema is None or a.schema == schema]


def detect_format(column_names: Iterable[str], schema: str | None = None) -> str:
    """Name of the first adapter (by priority) whose detection rule matches the columns, optionally for ``schema``.

    Raises ValueError listing the auto-detectable formats and their columns when nothing matches.
    """
    columns = list(column_names)
    if schema is not None:
        check_schema(schema)
    for adapter in _detection_order():
        if (schema is None or adapter.schema == schema) and adapter.matches(columns):
            return adapter.name
    known = [
        f"{a.name} [{a.schema}: {' + '.join(sorted(a.detect[0]))}]"
        for a in _detection_order()
        if a.detect and (schema is None or a.schema == schema)
    ]
    target = f" as '{schema}' rows" if schema else ""
    raise ValueError(
        f"cannot detect the dataset format{target} from columns [{', '.join(columns)}]; "
        f"known formats: {'; '.join(known)}; or name a format explicitly (one of {', '.join(list_adapters(schema))})"
    )
