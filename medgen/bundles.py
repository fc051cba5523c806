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


def config_bundle_root(name: str) -> str:
    """The bundle folder of the config being run: the parent of the ``configs/`` folder of the MONAI
    ``ConfigWorkflow`` that is evaluating it (``python -m monai.bundle run``, ``monai.bundle.load``, medgen's own
    commands), so a config finds its weights from any current folder; outside a workflow, the bundle ``name`` as
    :func:`find_bundle` finds it. MONAI gives a config no key for its own location; this reads it off the workflow."""
    import inspect

    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            workflow = frame.f_locals.get("self")
            if isinstance(workflow, ConfigWorkflow):
                root = Path(workflow.config_root_path).resolve()
                return str(root.parent if root.name == "configs" else root)
            frame = frame.f_back
    finally:
        del frame
    return str(find_bundle(name).resolve())


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
    others = sorted(p.stem for p in (bundle / "configs").glob("*.y*ml"))
    raise FileNotFoundError(f"bundle {bundle} has no configs/{name}.yaml; its configs: {', '.join(others)}"
                            + (" (a latent bundle trains in two stages: --config train_autoencoder, then "
                               "--config train_diffusion)" if "train_autoencoder" in others else ""))


def read_config(bundle: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load(config_file(bundle, name).read_text())


#: keys whose values are class (or folder) names: read as text, so ``no,yes`` stays ``["no", "yes"]``
CLASS_KEYS = frozenset({"classes", "class_names", "source_classes", "class_map"})


def parse_class_value(value: str) -> Any:
    """A class list from the command line: ``a,b``, ``[a, b]`` or (``class_map``) a mapping, every name as text.

    yaml.safe_load would read ``no``/``yes``/``on``/``off``/``true`` as booleans and ``1`` as a number; class names
    are folder names, so they are read with YAML's BaseLoader (all scalars text). ``null`` or ``~`` is null.
    """
    stripped = value.strip()
    if stripped in ("null", "~", "None", ""):
        return None
    if stripped[:1] in ("[", "{"):
        return yaml.load(stripped, Loader=yaml.BaseLoader)
    if stripped[:1] in ("$", "@", "%"):
        return stripped  # a config expression, reference or macro
    if "," in stripped:
        return [c.strip() for c in stripped.split(",") if c.strip()]
    return stripped


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``--key value``, ``--key=value`` or ``key=value`` pairs; values parsed as YAML (so ``5`` is an int, ``[a, b]``
    a list), class names as text (:func:`parse_class_value`). ``-`` in a key is ``_``: ``--max-epochs`` is
    ``--max_epochs``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"override {arg} has no value: give --key value")
                value = args[i + 1]
                i += 1
        elif "=" in arg:
            key, _, value = arg.partition("=")
        else:
            raise ValueError(f"cannot read override {arg!r}: use --key value or key=value")
        key = key.replace("-", "_")
        try:
            out[key] = parse_class_value(value) if key.split("#")[-1] in CLASS_KEYS else yaml.safe_load(value)
            if key in ("classes", "source_classes") and isinstance(out[key], str) and out[key][:1] not in "$@%":
                out[key] = [out[key]]
        except yaml.YAMLError as err:
            raise ValueError(f"cannot read the value of --{key}: {value!r} is not valid YAML "
                             f"({str(err).splitlines()[0]})") from None
        i += 1
    return out


def run_bundle(bundle: str | Path, config: str, run_id: str, overrides: dict[str, Any] | None = None) -> Any:
    """Run ``run_id`` of ``configs/<config>.yaml`` with overrides, exactly as ``python -m monai.bundle run``; the
    folders the run claimed (:mod:`medgen.folder_lock`) are free again when it returns."""
    from monai.bundle import ConfigWorkflow

    from medgen.folder_lock import claims_released_after

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
    with claims_released_after():
        workflow.initialize()
        result = workflow.run()
        workflow.finalize()
    return result
