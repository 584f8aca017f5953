"""Command-line overrides checked against the config tree before Hydra starts.

Hydra answers a typo with a multi-line struct error and exit status 1; these checks answer it with one
line naming the key and what exists there. The tree is the union of the primary config and every
option of every config group, so a key is "known" when some choice could hold it; whether the chosen
config holds it with an allowed value is the app's validation.
"""

from __future__ import annotations

import functools
from pathlib import Path

from nfpsim.config import CONF_DIR, available, read_yaml
from nfpsim.errors import ConfigError

INTERNAL_GROUPS = {"runtime"}  # groups that configure Hydra itself, not the user's question
GLOBAL_PACKAGE = "@package _global_"  # an option that overrides keys all over the tree (experiments)


def _load(path: Path) -> dict:
    return {str(k): v for k, v in read_yaml(path).items()}


def _union(a: dict, b: dict) -> dict:
    """Keys of both mappings, recursively; where one side holds a mapping, its keys stay reachable."""
    merged = dict(a)
    for key, value in b.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _union(old, value)
        elif not isinstance(old, dict):
            merged[key] = value
    return merged


def groups(conf_dir: Path = CONF_DIR) -> set[str]:
    return {p.name for p in conf_dir.iterdir() if p.is_dir()} - INTERNAL_GROUPS


def default_groups(config_name: str, conf_dir: Path = CONF_DIR) -> set[str]:
    """The groups the primary config chooses an option of (the rest are added with ``+group=``)."""
    chosen = set()
    for entry in _load(conf_dir / f"{config_name}.yaml").get("defaults", []):
        if isinstance(entry, dict):
            for key in entry:
                chosen.add(key.split()[-1].split("@")[0])
    return chosen


@functools.lru_cache(maxsize=None)
def config_tree(config_name: str, conf_dir: Path = CONF_DIR) -> dict:
    tree = {k: v for k, v in _load(conf_dir / f"{config_name}.yaml").items() if k not in ("defaults", "hydra")}
    for group in groups(conf_dir):
        options = {}
        for path in sorted((conf_dir / group).glob("*.yaml")):
            if GLOBAL_PACKAGE not in path.read_text():
                options = _union(options, {k: v for k, v in _load(path).items() if k != "defaults"})
        tree[group] = options
    return tree


def check_key(tree: dict, key: str) -> None:
    """``a.b.c`` must exist down to the first leaf (values below a leaf or list are the app's to check)."""
    node, path = tree, []
    for part in key.split("."):
        if not isinstance(node, dict):
            return
        if part not in node:
            where = f" {'.'.join(path)}" if path else ""
            allowed = ", ".join(sorted(node)) or "none"
            raise ConfigError(f"{'.'.join(path + [part])}: unknown{where} setting; allowed: {allowed}")
        node = node[part]
        path.append(part)


def _check_options(group: str, value: str) -> None:
    for name in value.split(","):  # multirun sweeps: model=a,b
        name = name.strip()
        if name and name not in available(group):
            raise ConfigError(f"{group}={name}: unknown {group}; allowed: {', '.join(available(group))}")


def check_overrides(args: list[str], config_name: str, conf_dir: Path = CONF_DIR) -> None:
    """Catch the typos Hydra would answer with a multi-line message, before Hydra starts.

    ``group=name`` and ``+group=name`` must name an existing config of the group (each value of an
    ``a,b`` sweep too), and a group the app does not choose by default is added with ``+``;
    ``key=value`` and ``a.b.key=value`` must name a setting that exists. ``hydra.*`` settings, ``++``
    and ``+key`` additions of plain keys are left to Hydra.
    """
    tree = config_tree(config_name, conf_dir)
    group_names = groups(conf_dir)
    chosen = default_groups(config_name, conf_dir)
    for arg in args:
        if arg.startswith("-") or "=" not in arg or arg.startswith("++"):
            continue
        key, value = arg.split("=", 1)
        added = key.startswith("+")
        key = key.lstrip("~+")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):  # hydra/launcher=joblib: Hydra's own group
            continue
        if key in group_names:
            _check_options(key, value)
            if key not in chosen and not added:
                raise ConfigError(f"{key}={value}: {key} is not chosen by default, add it with a plus: "
                                  f"+{key}={value}")
        elif not added:
            check_key(tree, key)
