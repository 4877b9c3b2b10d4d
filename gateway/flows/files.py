"""Flow files on disk: ``flows/*.yaml``, validated like partner mapping files.

Every problem names the file, the key path and the line::

    flows/syspro-stock.yaml:9:5: target.import_id: '12000' is not of the form ^112\\d{9}$

``flows/schema.json`` is the JSON Schema editors use (``python -m gateway.flows.files schema``).
The YAML reading (positions, the small set of implicit types, alias-bomb guard) and the wording
of pydantic's errors are the partner files' own (:mod:`translators.partners`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from gateway.flows.model import Flow
from translators.partners import Problem, _error_problem, _load_yaml, format_path

__all__ = ["FlowFile", "FlowFileError", "check_flow_directory", "flow_json_schema_text", "load_flow_directory",
           "parse_flow_text", "write_flow_schema"]

DEFAULT_FLOWS_DIR = Path("flows")
SUFFIXES = (".yaml", ".yml")
SCHEMA_FILE = "schema.json"
MAX_FILE_BYTES = 1_000_000


class FlowFileError(ValueError):
    """A flow file (or directory) that cannot be used; ``.problems`` says why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class FlowFile:
    """A valid flow, where it came from and the hash of its text (a dry run is of one exact text)."""

    flow: Flow
    source: str
    text_sha256: str


def _model_in(annotation: typing.Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        return _model_in(args[1]) if len(args) == 2 else None
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def _allowed_keys(path: tuple) -> list[str]:
    """The keys the model allows at ``path`` (a dict's keys, e.g. fields' column names, are free)."""
    model: type[BaseModel] | None = Flow
    skip_next = False
    for part in path:
        if skip_next or isinstance(part, int):
            skip_next = False
            continue
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        skip_next = typing.get_origin(annotation) is dict
        model = _model_in(annotation)
    return [] if skip_next or model is None else list(model.model_fields)


def _plain_loc(loc: tuple) -> tuple:
    """pydantic puts a union member's name (``str``, ``function-after[...]``) in the path: drop it."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p in ("str", "ColumnSpec")
                                                                 or p.startswith("function-"))))


def _problem(source: str, err: dict, marks) -> Problem:
    err = {**err, "loc": _plain_loc(tuple(err["loc"]))}
    problem = _error_problem(source, err, marks)
    if err["type"] == "extra_forbidden":
        loc = tuple(p for p in err["loc"] if p != "[key]")
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        message = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                            f"; allowed here: {', '.join(allowed)}" if allowed else "")
        problem = Problem(source, format_path(loc), message, *marks.at(loc, key=True))
    return problem


def parse_flow_text(text: str, source: str) -> Flow:
    """Parse and validate one flow file's text; raises :class:`FlowFileError` listing every problem."""
    if not text.strip():
        raise FlowFileError([Problem(source, "", "the file is empty; a flow file needs name, source, target "
                                                 "and fields")])
    data, marks, problems = _load_yaml(text, source)
    if problems:
        if data is None and problems[0].message.startswith("the file must be a mapping"):
            problems = [Problem(source, "", "the file must be a mapping of keys (name, source, target, fields, ...)",
                                problems[0].line, problems[0].column)]
        raise FlowFileError(problems)
    try:
        flow = Flow.model_validate(data)
    except ValidationError as exc:
        seen: set[str] = set()
        out = []
        for err in exc.errors(include_url=False):
            p = _problem(source, err, marks)
            # a plain column name or a mapping: report the mapping's problems, not "expected text"
            if err["type"] == "string_type" and "fields" in err["loc"][:1]:
                continue
            if str(p) not in seen:
                seen.add(str(p))
                out.append(p)
        raise FlowFileError(out) from None
    stem = Path(source).stem
    if stem != flow.name and Path(source).suffix in SUFFIXES:
        raise FlowFileError([Problem(source, "name", f"the file is named {Path(source).name} but the flow is "
                                     f"{flow.name!r}; name the file {flow.name}.yaml", *marks.at(("name",)))])
    return flow


def flow_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file())


def _read(path: Path) -> tuple[str | None, Problem | None]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, Problem(str(path), "", f"cannot read the file: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        return None, Problem(str(path), "", f"the file is {len(data)} bytes; a flow file is at most {MAX_FILE_BYTES}")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, Problem(str(path), "", "the file is not UTF-8 text; save it as UTF-8", line)


def _check(directory: Path) -> tuple[dict[str, FlowFile], list[Problem]]:
    if not directory.is_dir():
        return {}, [Problem(str(directory), "", "no such flow directory")]
    flows: dict[str, FlowFile] = {}
    problems: list[Problem] = []
    for path in flow_files(directory):
        text, problem = _read(path)
        if problem:
            problems.append(problem)
            continue
        try:
            flow = parse_flow_text(text, str(path))
        except FlowFileError as exc:
            problems += exc.problems
            continue
        if flow.name in flows:
            problems.append(Problem(str(path), "name", f"flow {flow.name!r} is already defined in "
                                                       f"{flows[flow.name].source}"))
            continue
        flows[flow.name] = FlowFile(flow, str(path), hashlib.sha256(text.encode()).hexdigest())
    return flows, problems


def load_flow_directory(directory: str | Path = DEFAULT_FLOWS_DIR) -> dict[str, FlowFile]:
    """Every flow in ``directory`` by name; all or nothing (raises :class:`FlowFileError`)."""
    flows, problems = _check(Path(directory))
    if problems:
        raise FlowFileError(problems)
    return flows


def check_flow_directory(directory: str | Path = DEFAULT_FLOWS_DIR) -> tuple[bool, list[str]]:
    """``gateway flows check``: one line per flow or problem, and whether all are good."""
    flows, problems = _check(Path(directory))
    lines = [f"ok   {f.source}: {name}: {f.flow.source.system} {f.flow.source.entity} -> Anaplan "
             f"{f.flow.target.kind}, {f.flow.mode}, {'on' if f.flow.enabled else 'off'}"
             for name, f in sorted(flows.items())]
    lines += [f"FAIL {p}" for p in problems]
    schema = Path(directory) / SCHEMA_FILE
    if schema.is_file() and schema.read_text("utf-8") != flow_json_schema_text():
        lines.append(f"note {schema}: differs from this gateway's schema; regenerate it with "
                     f"python -m gateway.flows.files schema {directory}")
    return not problems, lines


def flow_json_schema_text() -> str:
    schema = Flow.model_json_schema()
    schema.pop("title", None)
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "EDI gateway record flow file",
           "description": "A record flow: SYSPRO or Plex records into Anaplan (an import, a process or a list). "
                          "See flows/README.md.", **schema}
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"


def write_flow_schema(directory: str | Path = DEFAULT_FLOWS_DIR) -> Path:
    path = Path(directory) / SCHEMA_FILE
    path.write_text(flow_json_schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["schema"]:
        print(write_flow_schema(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_FLOWS_DIR))
    else:
        ok, lines = check_flow_directory(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_FLOWS_DIR)
        print("\n".join(lines))
        sys.exit(0 if ok else 1)
