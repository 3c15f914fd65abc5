"""``--config FILE.yaml``: a YAML mapping of the launcher's flags, expanded into the flags it holds."""

from __future__ import annotations

import argparse

from tune_jobs.launch import UsageError


def expand_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--config FILE.yaml`` replaced by the flags it holds (keys: the flags' names; a mapping for ``grid``,
    ``set`` and ``space``; lists for several values; true for a switch), before the other flags."""
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    import yaml

    rest, path = [], None
    items = iter(argv)
    for arg in items:
        if arg == "--config":
            path = next(items, None)
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
        else:
            rest.append(arg)
    try:
        with open(path or "", encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"--config {path}: {error}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values")
    known = {o.lstrip("-"): o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    flags: list[str] = []
    for key, value in loaded.items():
        flag = known.get(str(key).replace("_", "-"))
        if flag is None or flag == "--config":
            raise UsageError(f"--config {path}: unknown key {key!r} (keys are the launcher's flags, e.g. grid, set, "
                             "space, search, num_samples)")
        if isinstance(value, dict):
            for k, v in value.items():
                flags += [flag, f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"]
        elif value is True:
            flags.append(flag)
        elif value is False:
            if f"--no-{flag[2:]}" in known.values():
                flags.append(f"--no-{flag[2:]}")
        else:
            for item in value if isinstance(value, list) else [value]:
                flags += [flag, str(item)]
    return flags + rest
