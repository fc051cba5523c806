"""Find bundles and run their configs (the same way ``python -m monai.bundle run`` does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO_BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def bundle_search_path() -> list[Path]:
    """Folders searched for a bundle given by name: ``MEDGEN_BUNDLES`` (``:``-separated), ./bundles, the repo's."""
    extra = [Path(p) for p in os.environ.get("MEDGEN_BUNDLES", "").split(os.pathsep) if p]
    return [*extra, Path.cwd() / "bundles", REPO_BUNDLES]


def find_bundle(name_or_path: str | Path) -> Path:
    """A bundle folder (one with ``configs/``) from a path or a bundle name."""
    candidate = Path(name_or_path)
    if (candidate / "configs").is_dir():
        return candidate
    for folder in bundle_search_path():
        if (folder / str(name_or_path) / "configs").is_dir():
            return folder / str(name_or_path)
    known = sorted(p.name for p in list_bundles())
    raise FileNotFoundError(f"no bundle {str(name_or_path)!r}: give a bundle folder or one of {known}")


def list_bundles() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in bundle_search_path():
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if (p / "configs" / "metadata.json").is_file():
                    seen.setdefault(p.name, p)
    return list(seen.values())


def config_file(bundle: Path, name: str) -> Path:
    for suffix in (".yaml", ".yml", ".json"):
        path = bundle / "configs" / f"{name}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"bundle {bundle} has no configs/{name}.yaml")


def read_config(bundle: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load(config_file(bundle, name).read_text())


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``--key value`` or ``key=value`` pairs; values parsed as YAML (so ``5`` is an int, ``[a, b]`` a list)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"override {arg} has no value")
                value = args[i + 1]
                i += 1
        elif "=" in arg:
            key, _, value = arg.partition("=")
        else:
            raise ValueError(f"cannot read override {arg!r}: use --key value or key=value")
        out[key.replace("-", "_") if key not in out else key] = yaml.safe_load(value)
        i += 1
    return out


def run_bundle(bundle: str | Path, config: str, run_id: str, overrides: dict[str, Any] | None = None) -> Any:
    """Run ``run_id`` of ``configs/<config>.yaml`` with overrides, exactly as ``python -m monai.bundle run``."""
    from monai.bundle import ConfigWorkflow

    bundle_dir = find_bundle(bundle)
    overrides = dict(overrides or {})
    overrides.setdefault("bundle_root", str(bundle_dir))
    meta = bundle_dir / "configs" / "metadata.json"
    logging_file = bundle_dir / "configs" / "logging.conf"
    workflow = ConfigWorkflow(
        config_file=str(config_file(bundle_dir, config)),
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(logging_file) if logging_file.is_file() else None,
        workflow_type=run_id,
        run_id=run_id,
        **overrides,
    )
    workflow.initialize()
    result = workflow.run()
    workflow.finalize()
    return result
