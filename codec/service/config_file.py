"""YAML config files checked against pydantic models: any mistake becomes one line naming the key and line."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line naming the file and key."""


def _line_of(root, path) -> int | None:
    """1-based line of the YAML node at `path` (keys and list indices), or of its nearest parent."""
    node, line = root, None
    for key in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
    return node.start_mark.line + 1 if node is not None else line


def load_config(path, model: type[BaseModel]) -> BaseModel:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f" (line {line})" if line else ""
        more = f" [and {len(e.errors()) - 1} more]" if len(e.errors()) > 1 else ""
        msg = err["msg"].replace("\n", " ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(f"{path}: {key}{where}: {msg}{more}") from None
