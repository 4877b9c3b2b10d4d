"""Partner mapping files as text: YAML in, a :class:`PartnerMapping` or plain-worded problems out.

Pure: no file system. :mod:`gateway.partners` reads the files and calls these functions.

Every problem names the file, the key path (``mapping.part_numbers.buyer[2]``,
``identifiers.x12[0].id``) and, where the YAML says, the line and column::

    partners/acme.yaml:12:7: mapping.part_numbers.buyr: unknown key 'buyr' (did you mean 'buyer'?)

YAML is read with a deliberately small set of implicit types: only ``true``/``false`` and
``null``/``~`` are not text. So ``004010``, ``01`` and ``NO`` stay the strings an EDI file
has, where plain YAML 1.1 would make them the number 2056, the number 1 and ``false``.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from translators.mapping import CODE_PATTERN, EdiIdentifier, PartnerDirectory, PartnerMapping

__all__ = [
    "PartnerFileError",
    "Problem",
    "check_directory_texts",
    "mapping_json_schema",
    "mapping_json_schema_text",
    "parse_partner_text",
]

SCHEMA_TITLE = "EDI gateway partner mapping file"
MAX_YAML_NODES = 20_000  # a mapping file has a few hundred; guards against alias bombs

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a partner file. ``path`` is '' when it concerns the file as a whole."""

    source: str
    path: str
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.source
        if self.line:
            where += f":{self.line}" + (f":{self.column}" if self.column else "")
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PartnerFileError(ValueError):
    """A partner file (or a directory of them) that cannot be used; ``.problems`` lists why."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(problems)
        sources = list(dict.fromkeys(p.source for p in self.problems))
        self.source: str | None = sources[0] if len(sources) == 1 else None
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            where = self.source or f"{len(sources)} partner files"
            text = f"{len(self.problems)} problems in {where}:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)


# ---------------------------------------------------------------------------------------------
# YAML with positions


class _Loader(yaml.SafeLoader):
    """SafeLoader whose only implicit non-text scalars are true/false and null."""

    yaml_implicit_resolvers: dict[str, Any] = {}


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _Bad(Exception):
    def __init__(self, path: KeyPath, message: str, node: yaml.Node | None):
        self.path, self.message, self.node = path, message, node


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _mark(node: yaml.Node | None) -> tuple[int | None, int | None]:
    if node is None:
        return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1


class Marks:
    """Where each key path is in the file: the value's position, and the key's for mapping entries."""

    def __init__(self) -> None:
        self.values: dict[KeyPath, tuple[int | None, int | None]] = {}
        self.keys: dict[KeyPath, tuple[int | None, int | None]] = {}

    def at(self, path: KeyPath, key: bool = False) -> tuple[int | None, int | None]:
        """Line and column of ``path`` (of its key if ``key``), or of the nearest enclosing path."""
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return None, None


class _Builder:
    """Turns the composed YAML node tree into plain data, remembering where each key path is."""

    def __init__(self, loader: _Loader):
        self.loader = loader
        self.marks = Marks()
        self.nodes = 0

    def build(self, node: yaml.Node, path: KeyPath = ()) -> Any:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise _Bad(path, f"the file is too large or expands too far through aliases (over {MAX_YAML_NODES} values)", node)
        self.marks.values[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node)
            except yaml.YAMLError as e:
                raise _Bad(path, f"cannot read this value: {getattr(e, 'problem', None) or e}", node) from None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            try:
                self.loader.flatten_mapping(node)  # resolves << merge keys
            except yaml.YAMLError as e:
                raise _Bad(path, f"cannot merge: {getattr(e, 'problem', None) or e}", node) from None
            out: dict[str, Any] = {}
            first: dict[str, yaml.Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Bad(path, "a key must be plain text, not a list or mapping", key_node)
                key = key_node.value  # keys are always text, even 'true' or '01'
                if key in first:
                    line, _ = _mark(first[key])
                    raise _Bad((*path, key), f"key {key!r} appears twice (first on line {line})", key_node)
                first[key] = key_node
                self.marks.keys[(*path, key)] = _mark(key_node)
                out[key] = self.build(value_node, (*path, key))
            return out
        raise _Bad(path, f"unsupported YAML node {node.tag}", node)  # pragma: no cover


def _yaml_problem(source: str, e: yaml.YAMLError) -> Problem:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    message = f"YAML syntax error: {problem}"
    if "another document" in problem:
        message = "the file holds more than one YAML document ('---'); a mapping file is a single document"
        context = None
    if context:
        ctx_mark = getattr(e, "context_mark", None)
        message += f" ({context}" + (f" on line {ctx_mark.line + 1}" if ctx_mark else "") + ")"
    if "\\t" in problem or "'\\t'" in problem or "tab" in problem:
        message += "; indent with spaces, not tabs"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(source, "", message, line, column)


def _load_yaml(text: str, source: str) -> tuple[Any, Marks, list[Problem]]:
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        loader = _Loader(text)  # reads the whole text first: control characters are refused here
    except yaml.YAMLError as e:
        return None, Marks(), [_yaml_problem(source, e)]
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            return None, Marks(), [_yaml_problem(source, e)]
        except RecursionError:
            return None, Marks(), [Problem(source, "", "the file nests lists or mappings too deeply to be a mapping file")]
        if node is None:
            return None, Marks(), [Problem(source, "", "the file is empty; a mapping file needs at least 'id' and 'name'")]
        builder = _Builder(loader)
        try:
            data = builder.build(node)
        except RecursionError:
            return None, builder.marks, [Problem(source, "", "the file nests lists or mappings too deeply to be a mapping file")]
        except _Bad as bad:
            line, column = _mark(bad.node)
            return None, builder.marks, [Problem(source, format_path(bad.path), bad.message, line, column)]
        if not isinstance(data, dict):
            line, column = _mark(node)
            return None, builder.marks, [Problem(
                source, "", f"the file must be a mapping of keys (id, name, identifiers, ...), not {_describe(data)}",
                line, column,
            )]
        return data, builder.marks, []
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# Pydantic errors in plain words

_PATTERN_WORDS = {
    CODE_PATTERN: "an EDI qualifier code: 1 to 3 upper-case letters or digits (e.g. BP, 137, SU)",
    r"^[A-Z0-9]{2}$": "an ISA05 qualifier: 2 upper-case letters or digits (e.g. ZZ, 01, 12)",
    r"^[a-z0-9][a-z0-9_-]*$": "a partner id: lower-case letters, digits, '-' and '_', starting with a letter "
    "or digit (e.g. acme-fasteners)",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        return None  # free-form keys: no model to suggest from
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def _model_at(path: KeyPath) -> type[BaseModel] | None:
    """The model whose keys are allowed at ``path`` (PartnerMapping at the top)."""
    model: type[BaseModel] | None = PartnerMapping
    for part in path:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _model_in(model.model_fields[part].annotation)
    return model


def _choices(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


def _error_problem(source: str, err: dict[str, Any], marks: Marks) -> Problem:
    loc: KeyPath = tuple(p for p in err["loc"] if p != "[key]")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    message = err["msg"]

    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        message = f"unknown key {key!r}"
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif allowed:
            message += f"; allowed here: {', '.join(allowed)}"
    elif kind == "missing":
        message = f"required key {loc[-1]!r} is missing"
    elif kind == "string_type":
        message = f"expected text, got {_describe(value)}"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"expected true or false, got {_describe(value)}"
    elif kind == "list_type":
        message = f"expected a list, got {_describe(value)}"
        if isinstance(value, str):
            message += f"; write [{value}] or put each item on its own '- ' line"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"expected a mapping of keys to values, got {_describe(value)}"
    elif kind == "literal_error":
        options = _choices(ctx.get("expected", ""))
        message = f"{value!r} is not one of: {', '.join(options)}" if options else message
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    elif kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(ctx.get("pattern", ""), f"of the form {ctx.get('pattern')}")
        message = f"{value!r} is not {words}"
    elif kind == "string_too_short":
        message = "must not be empty" if ctx.get("min_length") == 1 else (
            f"{value!r} is too short: at least {ctx.get('min_length')} characters")
    elif kind == "string_too_long":
        message = f"{value!r} is too long: at most {ctx.get('max_length')} characters"
        if loc[:2] == ("identifiers", "x12") and loc[-1] == "id":
            message += " (ISA06 is 15 characters)"
    elif kind == "too_short":
        message = "must list at least one item"
    elif kind == "value_error":
        message = str(ctx.get("error", message))
    elif kind == "default_value":
        loc = (*loc, ctx["key"])

    # An unknown key is shown where the key is; anything else where its value is.
    line, column = marks.at(loc, key=kind == "extra_forbidden")
    return Problem(source, format_path(loc), message, line, column)


# ---------------------------------------------------------------------------------------------
# Checks across keys of one file


def _identity(ident: EdiIdentifier) -> tuple[str, str | None, str | None]:
    return ident.id.upper(), ident.qualifier, ident.group_id.upper() if ident.group_id else None


def _show(standard: str, ident: EdiIdentifier) -> str:
    text = f"{ident.qualifier}:{ident.id}" if ident.qualifier else ident.id
    return f"{standard.upper()} sender {text}" + (f" (group {ident.group_id})" if ident.group_id else "")


def _file_checks(m: PartnerMapping) -> list[tuple[KeyPath, str]]:
    out: list[tuple[KeyPath, str]] = []
    for standard in ("x12", "edifact"):
        seen: dict[tuple[Any, ...], int] = {}
        for i, ident in enumerate(getattr(m.identifiers, standard)):
            key = _identity(ident)
            if key in seen:
                out.append((("identifiers", standard, i), f"repeats identifiers.{standard}[{seen[key]}]"))
            seen.setdefault(key, i)

    x12, edifact = bool(m.identifiers.x12), bool(m.identifiers.edifact)
    kind = m.acknowledgments.kind
    if kind in ("997", "999") and edifact and not x12:
        out.append((("acknowledgments", "kind"),
                    f"{kind} is an X12 acknowledgment but the partner has only EDIFACT identifiers; use CONTRL or auto"))
    if kind == "CONTRL" and x12 and not edifact:
        out.append((("acknowledgments", "kind"),
                    "CONTRL is an EDIFACT acknowledgment but the partner has only X12 identifiers; use 997, 999 or auto"))
    for i, version in enumerate(m.versions):
        is_x12 = version[:1].isdecimal()
        if is_x12 and edifact and not x12:
            out.append((("versions", i), f"{version} is an X12 version but the partner has only EDIFACT identifiers"))
        if not is_x12 and x12 and not edifact:
            out.append((("versions", i), f"{version} is an EDIFACT directory but the partner has only X12 identifiers"))

    # A qualifier the file puts in two part-number lists is ambiguous. (A list the file sets
    # claims its codes from the standard lists it leaves alone: that is not an overlap.)
    parts = m.mapping.part_numbers
    given = [name for name in ("buyer", "supplier", "gtin") if name in parts.model_fields_set]
    for a_i, a in enumerate(given):
        for b in given[a_i + 1:]:
            for idx, code in enumerate(getattr(parts, b)):
                if code in getattr(parts, a):
                    out.append((("mapping", "part_numbers", b, idx),
                                f"{code!r} is also in mapping.part_numbers.{a}; a qualifier can carry only one kind "
                                "of part number"))
    return out


# ---------------------------------------------------------------------------------------------
# Public API


def _parse(text: str, source: str) -> tuple[PartnerMapping | None, list[Problem], Marks]:
    data, marks, problems = _load_yaml(text, source)
    if problems:
        return None, problems, marks
    try:
        mapping = PartnerMapping.model_validate(data)
    except ValidationError as e:
        return None, [_error_problem(source, dict(err), marks) for err in e.errors(include_url=False)], marks
    problems = [
        Problem(source, format_path(path), message, *marks.at(path))
        for path, message in _file_checks(mapping)
    ]
    return (None if problems else mapping), problems, marks


def parse_partner_text(text: str, source: str) -> PartnerMapping:
    """Parse and validate one mapping file's text; ``source`` names it in every problem.

    Raises :class:`PartnerFileError` listing every problem found.
    """
    mapping, problems, _ = _parse(text, source)
    if problems or mapping is None:
        raise PartnerFileError(problems)
    return mapping


def check_directory_texts(items: list[tuple[str, str]]) -> tuple[PartnerDirectory, list[Problem]]:
    """Parse every ``(source, text)`` and check them against each other.

    Returns the directory of the partners that are usable and the problems of the rest:
    each file's own problems, a partner id used twice, and an EDI sender identity claimed by
    two active partners (the later file, in ``items`` order, is the one reported and left out).
    """
    directory = PartnerDirectory()
    problems: list[Problem] = []
    first_source: dict[str, str] = {}
    claimed: dict[tuple[str, str], list[tuple[Any, str, str, int]]] = {}

    for source, text in items:
        mapping, file_problems, marks = _parse(text, source)
        problems.extend(file_problems)
        if mapping is None:
            continue
        if mapping.id in first_source:
            problems.append(Problem(
                source, "id", f"partner id {mapping.id!r} is already used by {first_source[mapping.id]}; "
                "each partner needs its own id", *marks.at(("id",)),
            ))
            continue
        first_source[mapping.id] = source

        conflicts: list[Problem] = []
        if mapping.active:
            for standard in ("x12", "edifact"):
                for i, ident in enumerate(getattr(mapping.identifiers, standard)):
                    for other, other_source, other_id, j in claimed.get((standard, ident.id.upper()), []):
                        same_qualifier = not ident.qualifier or not other.qualifier or ident.qualifier == other.qualifier
                        same_group = _identity(ident)[2] == _identity(other)[2]
                        if same_qualifier and same_group:
                            path = ("identifiers", standard, i)
                            conflicts.append(Problem(
                                source, format_path(path),
                                f"{_show(standard, ident)} is already claimed by partner {other_id!r} "
                                f"({other_source} identifiers.{standard}[{j}]); a sender can belong to only one "
                                "active partner",
                                *marks.at(path),
                            ))
        if conflicts:
            problems.extend(conflicts)
            del first_source[mapping.id]
            continue
        if mapping.active:
            for standard in ("x12", "edifact"):
                for i, ident in enumerate(getattr(mapping.identifiers, standard)):
                    claimed.setdefault((standard, ident.id.upper()), []).append((ident, source, mapping.id, i))
        directory.add(mapping)
    return directory, problems


# ---------------------------------------------------------------------------------------------
# JSON Schema


def _add_factory_defaults(schema: dict[str, Any], model: type[BaseModel], seen: set[Any]) -> None:
    """pydantic leaves ``default_factory`` values out of the schema; editors want them."""
    if model.__name__ in seen:
        return
    seen.add(model.__name__)
    target = schema if model is PartnerMapping else schema["$defs"][model.__name__]
    for name, field in model.model_fields.items():
        inner = _model_in(field.annotation)
        if inner is not None:
            _add_factory_defaults(schema, inner, seen)
            continue
        if field.default_factory is not None:
            target["properties"][name].setdefault("default", field.get_default(call_default_factory=True))


def mapping_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a partner mapping file, generated from the model."""
    generated = PartnerMapping.model_json_schema()
    _add_factory_defaults(generated, PartnerMapping, set())
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": SCHEMA_TITLE,
        "description": (
            "One trading partner of the EDI gateway: who it is (X12 ISA/GS and EDIFACT UNB identifiers), what it "
            "sends, how its documents deviate from the standard mapping, where they go in Plex, and whether "
            "acknowledgments are sent. Every key but id and name is optional: what a file leaves out is the "
            "standard mapping. See partners/README.md."
        ),
        **generated,
    }


def mapping_json_schema_text() -> str:
    """The schema as it is committed in ``partners/schema.json``."""
    return json.dumps(mapping_json_schema(), indent=2, ensure_ascii=False) + "\n"
