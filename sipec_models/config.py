"""Loading and validating ``config.yaml`` and ``videos.tsv`` with clear messages.

Both are checked against the JSON schemas in ``workflow/schemas/`` before any
job starts. Messages name the file, the field (or row and column) and what
is wrong, and suggest the nearest valid key for typos.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "workflow" / "schemas"
REQUIRED_COLUMNS = ("id", "path", "n_animals")


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the field."""


def _load_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / name).read_text())


def _field(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Insert schema defaults for missing keys, recursively (in place)."""
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"])
        return
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def _explain(error: jsonschema.ValidationError, source: str) -> str:
    where = _field(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in unknown:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            full = f"{where}.{key}" if error.absolute_path else key
            parts.append(f"{source}: unknown option {full!r}{hint}; allowed here: {', '.join(allowed)}")
        return "\n".join(parts)
    if error.validator == "type":
        return f"{source}: {where} must be of type {error.validator_value}, got {error.instance!r}"
    if error.validator == "enum":
        return f"{source}: {where} must be one of {error.validator_value}, got {error.instance!r}"
    return f"{source}: {where}: {error.message}"


def validate_config(config: Mapping[str, Any], source: str = "config/config.yaml") -> dict:
    """Validate a config mapping and return a copy with schema defaults filled in.

    Raises:
        ConfigError: listing every problem, each naming ``source`` and the field.
    """
    schema = _load_schema("config.schema.yaml")
    config = copy.deepcopy(dict(config))
    _fill_defaults(config, schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_explain(e, source) for e in errors))
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return validate_config(data, source=str(path))


def load_videos(
    path: str | os.PathLike,
    check_files: bool = True,
    producible: set[str] | None = None,
) -> pd.DataFrame:
    """Read and validate the videos table.

    Args:
        path: TSV with columns ``id``, ``path``, ``n_animals`` and optional
            metadata columns.
        check_files: check that each video exists and opens as a video.
        producible: video paths that a rule of the workflow creates (the
            demo), exempt from the existence check.

    Returns:
        The table indexed by ``id`` (``n_animals`` as int, metadata as strings).

    Raises:
        ConfigError: missing columns, bad values, duplicate ids, missing or
            unreadable videos; the message names the file, row and column.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: videos table does not exist")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a tab-separated table ({exc})") from None
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        hint = ""
        if len(table.columns) == 1 and ("," in table.columns[0] or " " in table.columns[0]):
            hint = " (the file must be tab-separated)"
        raise ConfigError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.columns)}{hint}"
        )
    if table.empty:
        raise ConfigError(f"{path}: lists no videos")
    schema = _load_schema("videos.schema.yaml")
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    records = []
    for i, row in table.iterrows():
        record = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        line = i + 2  # header is line 1
        try:
            record["n_animals"] = int(record["n_animals"])
        except ValueError:
            problems.append(f"{path}, line {line}: column 'n_animals' must be a positive integer, got {row['n_animals']!r}")
            continue
        for error in validator.iter_errors(record):
            column = _field(error.absolute_path)
            problems.append(f"{path}, line {line}: column {column!r}: {error.message}")
        records.append(record)
    ids = [r["id"] for r in records]
    duplicated = sorted({x for x in ids if ids.count(x) > 1})
    if duplicated:
        problems.append(f"{path}: duplicate video id(s): {', '.join(duplicated)}")
    if check_files and not problems:
        producible = {str(Path(p)) for p in (producible or set())}
        for r in records:
            if str(Path(r["path"])) in producible:
                continue
            problem = check_video_file(r["path"])
            if problem:
                problems.append(f"{path}, video {r['id']!r}: {problem}")
    if problems:
        raise ConfigError("\n".join(problems))
    frame = pd.DataFrame.from_records(records).set_index("id", drop=False)
    return frame


def check_video_file(video: str | os.PathLike) -> str | None:
    """Return a problem description if the file is missing or does not open as a video."""
    from sipec_models.io.video import VideoError, _open

    p = Path(video)
    if not p.exists():
        return f"{p}: video file does not exist"
    if p.stat().st_size == 0:
        return f"{p}: video file is empty"
    try:
        _open(p).close()
    except VideoError as exc:
        return str(exc)
    return None
