"""Loading a config: YAML files, `--set` overrides, and errors that name the key, the value and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.run import RunConfig
from pipeline.errors import ConfigError

MAX_YAML_NODES = 100_000  # values after aliases are expanded: a config has hundreds; an alias bomb, billions


def _expanded_size(root: yaml.Node, limit: int) -> int | None:
    """How many values the YAML graph holds once every alias is expanded (capped at limit + 1), counted over the
    shared graph without expanding it; None when an alias refers to the value that contains it."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = [] if isinstance(node, yaml.ScalarNode) else \
            [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else list(node.value)
        if done:
            busy.discard(id(node))
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(k)] for k in kids))
        elif id(node) not in sizes:
            if any(id(k) in busy or k is node for k in kids):
                return None
            busy.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def load_yaml(text: str, what: str):
    """`yaml.safe_load`, refusing a document whose aliases expand past MAX_YAML_NODES values (an alias bomb: the
    error names the limit, never the value) or refer to themselves."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, MAX_YAML_NODES)
        if size is None:
            raise ConfigError(f"{what}: a YAML alias refers to the value that contains it; fix: write the value out")
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{what}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias "
                              "bomb?); fix: write the values out, or use fewer nested aliases")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{what}: the YAML is nested too deeply; fix: flatten it") from None
    finally:
        loader.dispose()


def config_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object, str]]:
    """(key, default, description) per leaf field, nested sections flattened to dotted keys, in field order: what
    `--help` (describe_keys) and the generated configuration reference (flows/cli/docs_gen.py) print."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += config_keys(ann, key + ".")
        else:
            rows.append((key, field.get_default(call_default_factory=True), field.description or ""))
    return rows


def describe_keys(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """One line per config key with its default and description (for --help; never drifts)."""
    return [f"  {key} (default {default!r}): {desc}" for key, default, desc in config_keys(model or RunConfig, prefix)]


def _format_error(exc: ValidationError, root: type[BaseModel], where: dict[str, str] | None = None) -> str:
    """One line per error; `where` maps a key set by `--set` to that override, so the line names it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        source = next(
            (
                o
                for k, o in (where or {}).items()
                if key == k or key.startswith(k + ".") or (key and k.startswith(key + "."))
            ),
            None,
        )
        via = f" (from --set {source})" if source else ""
        if err["type"] == "extra_forbidden":
            section = _section_of(err["loc"][:-1], root)
            known = ", ".join(sorted(section.model_fields)) if section else ""
            lines.append(f"unknown config key '{key}'{via}; fix: remove it or use one of: {known}")
        elif not err["loc"] or (err["type"] == "value_error" and isinstance(err.get("input"), dict)):
            # a whole-model or whole-section check names its keys itself
            lines.append(err["msg"].removeprefix("Value error, ") + (f" (from --set {source})" if source else ""))
        else:
            value = err.get("input")
            fix = _field_help(err["loc"], root)
            lines.append(
                (f"--set {source}: " if source else "") + f"config key '{key}' has invalid value {value!r}: "
                f"{err['msg']}" + (f"; fix: {fix}" if fix else "")
            )
    return "\n".join(lines)


def _section_of(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def _field_help(loc: tuple, root: type[BaseModel]) -> str | None:
    if not loc:  # a whole-model check: its message already names the keys and the fix
        return None
    section = _section_of(loc[:-1], root)
    if section is None:
        return None
    field = section.model_fields.get(str(loc[-1]))
    return field.description if field else None


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not key=value; fix: write it like generate.n=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r} has an empty key; fix: write it like generate.n=4")
    try:
        value = load_yaml(raw, f"--set {key}") if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--set {key}: cannot parse value {raw!r} ({' '.join(str(exc).split())}); fix: quote it "
            "as YAML, e.g. --set 'key=\"text\"'"
        ) from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: '{part}' is not a section; fix: set a key inside a section, e.g. generate.n=4"
                )
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load YAML (or the defaults when `path` is None), apply `--set` overrides, validate."""
    return load_model(RunConfig, path, overrides)


def load_model(root: type[BaseModel], path: str | Path | None = None, overrides: list[str] | None = None):
    """Any typed config (`RunConfig`, the trainer's `TrainConfig`) from YAML plus `--set` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {path} is a folder, not a YAML file; fix: pass the config file itself")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; fix: pass an existing YAML file to --config")
        try:
            loaded = load_yaml(path.read_text(encoding="utf-8"), f"config file {path}")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason}); fix: save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"config file {path} is not valid YAML ({' '.join(str(exc).split())}); fix: correct the "
                "YAML at that line"
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping at top level, got {type(loaded).__name__}; fix: "
                "write sections as keys, e.g. 'generate:' then '  n: 4'"
            )
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    set_keys = {".".join(parse_override(o)[0]): o for o in overrides or []}
    try:
        return root.model_validate(data)
    except ValidationError as exc:
        keys = [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
        from_set = all(
            any(k == s or k.startswith(s + ".") or s.startswith(k + ".") for s in set_keys) for k in keys if k
        )
        where = "" if from_set and set_keys else f" in {path}" if path else ""
        lines = _format_error(exc, root, set_keys).splitlines()
        sep = " " if len(lines) == 1 else "\n"
        raise ConfigError(f"invalid config{where}:{sep}" + "\n".join(lines)) from None
