"""Check a bundle offline the way the MONAI Model Zoo's ``ci/verify_bundle.py`` does, and a little more.

The zoo's checks: the required files (``LICENSE``, ``configs/metadata.json``, ``configs/inference.*``, and
``models/model.pt`` or a ``large_files.yml`` that says where to download it), ``changelog`` holding the current
``version``, metadata valid against the zoo's schema (``monai.bundle.verify_metadata``), the network's input and
output (``monai.bundle.verify_net_in_out``); plus the zoo's review rules: ``required_packages_version`` lists every
package the configs import besides monai, torch and numpy, no file over 25 MB outside ``large_files``,
``network_data_format`` with ``inputs.image`` and ``outputs.pred``, the training keys, and exported
``models/model.ts`` / ``models/model.onnx`` that load and run. Each problem is a :class:`Finding`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 25 * 1000 * 1000
LARGE_FILE_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
TRAINING_KEYS = ("bundle_root", "device", "dataset_dir", "train#trainer", "train#trainer#max_epochs",
                 "train#dataset", "train#inferer")
# MONAI Label's bundle app and the zoo's property check read these from the inference config.
INFERENCE_KEYS = ("bundle_root", "device", "network_def", "inferer")
VERSIONED_ELSEWHERE = {"monai", "torch", "numpy"}  # metadata has monai_version, pytorch_version, numpy_version
HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Finding:
    """One problem with a bundle: ``level`` is ``error`` (the zoo would refuse it) or ``warning``."""

    check: str
    message: str
    level: str = "error"

    def __str__(self) -> str:
        return f"[{self.level}] {self.check}: {self.message}"


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in CONFIG_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def load_metadata(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def read_large_files(bundle: Path) -> list[dict[str, Any]]:
    """The ``large_files`` entries of ``large_files.yml`` (or ``.yaml``/``.json``); empty if there is none."""
    for name in LARGE_FILE_NAMES:
        path = bundle / name
        if path.is_file():
            content = yaml.safe_load(path.read_text()) or {}
            return list(content.get("large_files", []))
    return []


def check_required_files(bundle: Path) -> list[Finding]:
    findings = []
    for name in ("LICENSE", "configs/metadata.json"):
        if not (bundle / name).is_file():
            findings.append(Finding("files", f"{bundle / name} is missing: the zoo requires it"))
    if _find_file(bundle / "configs", "inference") is None:
        findings.append(Finding("files", f"no {bundle}/configs/inference.json|yaml: the zoo requires one"))
    large = {entry.get("path") for entry in read_large_files(bundle)}
    if not (bundle / "models" / "model.pt").is_file() and "models/model.pt" not in large:
        findings.append(Finding("files", f"no {bundle}/models/model.pt and no large_files.yml entry for it: train "
                                         "the bundle or list the weights' download URL in large_files.yml"))
    if not (bundle / "docs" / "README.md").is_file():
        findings.append(Finding("files", f"no {bundle}/docs/README.md (the model card)", "warning"))
    return findings


def check_version(meta: dict[str, Any]) -> list[Finding]:
    if "version" not in meta:
        return [Finding("version", "metadata.json has no 'version'")]
    if meta["version"] not in meta.get("changelog", {}):
        return [Finding("version", f"version {meta['version']} is missing from 'changelog' in metadata.json: add "
                                   f"\"{meta['version']}\": \"<what changed>\"")]
    return []


def schema_path(bundle: Path, meta: dict[str, Any], schema: str | Path | None = None) -> Path | None:
    """The metadata schema file, offline: ``schema``, ``$MEDGEN_SCHEMA_DIR``, ``../shared/schemas`` or the zoo's
    ``<bundle>/eval/schema.json``, by the file name in metadata's ``schema`` URL."""
    if schema is not None:
        return Path(schema)
    name = str(meta.get("schema", "")).rsplit("/", 1)[-1]
    folders = [Path(p) for p in os.environ.get("MEDGEN_SCHEMA_DIR", "").split(os.pathsep) if p]
    folders += [REPO.parent / "shared" / "schemas", Path.cwd().parent / "shared" / "schemas"]
    candidates = [f / name for f in folders if name] + [bundle / "eval" / "schema.json"]
    return next((c for c in candidates if c.is_file()), None)


def check_metadata_schema(bundle: Path, meta: dict[str, Any], schema: str | Path | None = None) -> list[Finding]:
    from monai.bundle import verify_metadata

    path = schema_path(bundle, meta, schema)
    if path is None:
        return [Finding("schema", f"schema {meta.get('schema')!r} not found offline: put it in ../shared/schemas "
                                  "or $MEDGEN_SCHEMA_DIR, or pass --schema")]
    try:
        verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(path))
    except Exception as e:  # noqa: BLE001 - any failure is a finding to report, not a crash
        return [Finding("schema", f"metadata.json does not validate against {path.name}: {e}")]
    return []


def _data_format(meta: dict[str, Any]) -> dict[str, Any]:
    """``network_data_format`` with dict ``inputs``/``outputs``, or ``{}`` when it is malformed."""
    fmt = meta.get("network_data_format")
    if not isinstance(fmt, dict) or not all(isinstance(fmt.get(k, {}), dict) for k in ("inputs", "outputs")):
        return {}
    return fmt


def check_network_data_format(meta: dict[str, Any]) -> list[Finding]:
    fmt = _data_format(meta)
    findings = []
    if "image" not in fmt.get("inputs", {}):
        findings.append(Finding("network_data_format", "network_data_format has no inputs.image"))
    if "pred" not in fmt.get("outputs", {}):
        findings.append(Finding("network_data_format", "network_data_format has no outputs.pred"))
    return findings


def config_files(bundle: Path) -> list[Path]:
    configs = (bundle / "configs").iterdir()
    return sorted(p for p in configs if p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json")


def _walk_strings(node: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from ((None, value),) if isinstance(value, str) else _walk_strings(value)


def imported_modules(bundle: Path) -> set[str]:
    """Top-level modules the configs import (``imports``, ``$import``/``$from`` and dotted ``_target_``)."""
    modules: set[str] = set()
    for path in config_files(bundle):
        content = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
        for key, value in _walk_strings(content or {}):
            for match in re.finditer(r"(?:^|[\s;])(?:import|from)\s+([A-Za-z_][\w]*)", value if value[:1] == "$"
                                     else ""):
                modules.add(match.group(1))
            if key == "_target_" and "." in value:
                modules.add(value.lstrip("$").split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_required_packages(bundle: Path, meta: dict[str, Any]) -> list[Finding]:
    listed = {_normalise(k) for k in meta.get("required_packages_version", {})}
    distributions = importlib.metadata.packages_distributions()
    findings = []
    own = {p.stem for p in bundle.iterdir() if p.is_dir() or p.suffix == ".py"}  # the bundle's scripts/ etc.
    for module in sorted(imported_modules(bundle) - VERSIONED_ELSEWHERE - own):
        names = distributions.get(module, [module])
        if not any(_normalise(n) in listed for n in names):
            dist = names[0]
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "<version>"
            findings.append(Finding("required_packages_version", f"the configs import {module!r} but "
                                    f"required_packages_version has no {dist!r}: add \"{dist}\": \"{version}\""))
    return findings


def bundle_files(bundle: Path) -> list[Path]:
    """The files a bundle would ship: git's tracked and untracked-but-not-ignored files, or all files outside git."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "."], cwd=bundle, check=True,
                             capture_output=True, text=True).stdout
        return [bundle / p for p in out.split("\0") if p and (bundle / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in bundle.rglob("*") if p.is_file()]


def check_file_sizes(bundle: Path) -> list[Finding]:
    large = {entry.get("path") for entry in read_large_files(bundle)}
    findings = []
    for path in bundle_files(bundle):
        rel = path.relative_to(bundle).as_posix()
        size = path.stat().st_size
        if size > MAX_FILE_BYTES and rel not in large:
            findings.append(Finding("file_size", f"{rel} is {size / 1e6:.1f} MB (limit 25 MB): host it elsewhere and "
                                                 "list it in large_files.yml"))
    return findings


def file_hash(path: Path, hash_type: str) -> str:
    digest = HASHES[hash_type]()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_large_files(bundle: Path) -> list[Finding]:
    findings = []
    for entry in read_large_files(bundle):
        path, url = entry.get("path"), entry.get("url")
        if not path or not url:
            findings.append(Finding("large_files", f"large_files entry {entry} needs 'path' and 'url'"))
            continue
        hash_val, hash_type = entry.get("hash_val") or "", (entry.get("hash_type") or "").lower()
        if not hash_val:
            findings.append(Finding("large_files", f"{path} has no hash_val: its download cannot be checked "
                                                   "(fill it with medgen.zoo.fill_large_file_hashes)", "warning"))
        elif hash_type not in HASHES:
            findings.append(Finding("large_files", f"{path}: hash_type {hash_type!r} is not one of {sorted(HASHES)}"))
        elif (bundle / path).is_file() and file_hash(bundle / path, hash_type) != hash_val:
            findings.append(Finding("large_files", f"{path} does not match its {hash_type} in large_files: the file "
                                                   "changed since the hash was written"))
    return findings


def fill_large_file_hashes(bundle: str | Path, hash_type: str = "sha256") -> list[str]:
    """Write the hash of every ``large_files`` entry whose file is present; returns the paths updated."""
    bundle = Path(bundle)
    target = next((bundle / n for n in LARGE_FILE_NAMES if (bundle / n).is_file()), None)
    if target is None:
        raise FileNotFoundError(f"{bundle} has no large_files.yml")
    content = yaml.safe_load(target.read_text())
    updated = []
    for entry in content.get("large_files", []):
        if (bundle / entry["path"]).is_file():
            entry["hash_val"], entry["hash_type"] = file_hash(bundle / entry["path"], hash_type), hash_type
            updated.append(entry["path"])
    if target.suffix == ".json":
        target.write_text(json.dumps(content, indent=4))
    else:  # keep the header comment
        header = "".join(line for line in target.read_text().splitlines(keepends=True) if line.startswith("#"))
        target.write_text(header + yaml.safe_dump(content, sort_keys=False))
    return updated


def _has_key(parser: Any, key: str) -> bool:
    try:
        parser[key]
    except (KeyError, IndexError, ValueError, TypeError):
        return False
    return True


def check_config_keys(bundle: Path) -> list[Finding]:
    from monai.bundle import ConfigParser

    findings = []
    # a latent bundle trains its diffusion network with train_diffusion.* (the zoo's own latent bundles' name)
    configs = bundle / "configs"
    latent = not _find_file(configs, "train") and _find_file(configs, "train_diffusion")
    train = "train_diffusion" if latent else "train"
    for stem, keys, level in ((train, TRAINING_KEYS, "error"), ("inference", INFERENCE_KEYS, "error")):
        path = _find_file(bundle / "configs", stem)
        if path is None:
            if stem == "train":
                findings.append(Finding("config_keys", f"no {bundle}/configs/train.* (nor train_diffusion.*)",
                                        "warning"))
            continue
        parser = ConfigParser()
        parser.read_config(str(path))
        for key in keys:
            if not _has_key(parser, key):
                findings.append(Finding("config_keys", f"{path.name} has no '{key}'", level))
    return findings


def network_id(parser: Any) -> str:
    """``network_wrapper`` (all inputs positional) if the config has it, else ``network_def``."""
    return "network_wrapper" if _has_key(parser, "network_wrapper") else "network_def"


def check_net_in_out(bundle: Path, meta: dict[str, Any]) -> list[Finding]:
    """``monai.bundle.verify_net_in_out`` on the inference config's network, random weights, the extra inputs of
    ``network_data_format`` (timesteps, class labels, ...) passed as keyword ``extra_forward_args``."""
    from monai.bundle import ConfigParser, verify_net_in_out

    from medgen.networks.export import metadata_inputs

    config = _find_file(bundle / "configs", "inference")
    if config is None or "image" not in _data_format(meta).get("inputs", {}):
        return []  # reported by check_required_files / check_network_data_format
    parser = ConfigParser()
    parser.read_config(str(config))
    net_id = network_id(parser)
    extras = metadata_inputs(meta["network_data_format"], batch_size=1)
    extras.pop("image")
    try:
        verify_net_in_out(net_id=net_id, meta_file=str(bundle / "configs" / "metadata.json"), config_file=str(config),
                          device="cpu", extra_forward_args=extras, bundle_root=str(bundle))
    except Exception as e:  # noqa: BLE001
        return [Finding("net_in_out", f"verify_net_in_out {net_id} with {sorted(extras)} failed: "
                                      f"{type(e).__name__}: {e}")]
    return []


def check_exports(bundle: Path, meta: dict[str, Any]) -> list[Finding]:
    """``models/model.ts`` and ``models/model.onnx``, where present, load and give ``pred`` of the declared shape."""
    from medgen.networks.export import metadata_inputs

    fmt = _data_format(meta)
    if "image" not in fmt.get("inputs", {}) or "pred" not in fmt.get("outputs", {}):
        return []
    inputs = metadata_inputs(fmt, batch_size=2)
    pred = fmt["outputs"]["pred"]
    expected = (2, int(pred.get("num_channels", 1)), *[int(s) for s in pred.get("spatial_shape", [])])
    findings = []
    ts_path = bundle / "models" / "model.ts"
    if ts_path.is_file():
        try:
            import torch

            with torch.no_grad():
                shape = tuple(torch.jit.load(str(ts_path))(*inputs.values()).shape)
            if shape != expected:
                findings.append(Finding("torchscript", f"model.ts gives shape {shape}, metadata says {expected}"))
        except Exception as e:  # noqa: BLE001
            findings.append(Finding("torchscript", f"model.ts does not load or run: {type(e).__name__}: {e}"))
    onnx_path = bundle / "models" / "model.onnx"
    if onnx_path.is_file():
        findings += _check_onnx(onnx_path, inputs, expected)
    return findings


def _check_onnx(path: Path, inputs: dict[str, Any], expected: tuple[int, ...]) -> list[Finding]:
    try:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 17:
            return [Finding("onnx", f"model.onnx uses opset {opset}; export with opset 17 or later")]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs.values())}
        shape = tuple(session.run(None, feeds)[0].shape)
    except Exception as e:  # noqa: BLE001
        return [Finding("onnx", f"model.onnx does not load or run: {type(e).__name__}: {e}")]
    return [] if shape == expected else [Finding("onnx", f"model.onnx gives shape {shape}, metadata says {expected}")]


# What the zoo's ci/bundle_custom_data.py grants its own generative bundles (brats_mri_generative_diffusion,
# brats_mri_axial_slices_generative_diffusion): they are on exclude_verify_shape_list and
# exclude_verify_torchscript_list. A bundle gets an exclusion only by being named in those lists in the zoo.
ZOO_EXCLUSIONS = {"none": frozenset(), "generative": frozenset({"shape", "torchscript"})}
ZOO_LISTS = {"shape": "exclude_verify_shape_list", "torchscript": "exclude_verify_torchscript_list"}


def check_large_file_downloads(bundle: Path, timeout: float = 10.0) -> list[Finding]:
    """The zoo downloads every ``large_files`` entry first; one it cannot reach fails the bundle."""
    import urllib.request

    findings = []
    for entry in read_large_files(bundle):
        url = str(entry.get("url", ""))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                pass
        except Exception as e:  # noqa: BLE001 - every failure means the zoo's download step fails
            findings.append(Finding("download", f"large_files: {url} cannot be downloaded ({type(e).__name__}: "
                                                f"{e}); list only reachable locations, or ship the file"))
    return findings


def zoo_requirements(meta: dict[str, Any]) -> dict[str, str]:
    """Package -> version, as the zoo's ``ci/get_bundle_requirements.py`` writes them for ``pip install``."""
    pins = {}
    for key, name in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        if key in meta:
            pins[name] = str(meta[key])
    for key in ("optional_packages_version", "required_packages_version"):
        pins.update({str(k): str(v) for k, v in meta.get(key, {}).items()})
    return pins


def check_requirements_installable(meta: dict[str, Any]) -> list[Finding]:
    """Each pin the zoo installs must come from a package index: a package installed here from a local folder (an
    editable or path install, like medgen itself) is in no index, and a pin that differs from what is installed
    here was not what these checks ran with."""
    findings = []
    for name, version in zoo_requirements(meta).items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            findings.append(Finding("requirements", f"{name}=={version} is not installed here: not checked", "warning"))
            continue
        # every copy found (a source tree's egg-info can shadow the installed dist-info)
        urls = [json.loads(d.read_text("direct_url.json") or "{}").get("url", "")
                for d in importlib.metadata.distributions(name=name)]
        url = next((u for u in urls if u.startswith("file:")), "")
        if url.startswith("file:"):
            findings.append(Finding("requirements", f"{name}=={version}: installed here from {url}, not from a "
                                                    "package index, so the zoo's `pip install` of it fails; export "
                                                    "a self-contained bundle with `medgen zoo-export`"))
        elif dist.version.split("+")[0] != version:
            findings.append(Finding("requirements", f"{name}=={version} pinned, {dist.version} installed here: "
                                                    "the checks ran with the installed one", "warning"))
    return findings


def _zoo_shape(bundle: Path, config: Path) -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(config), bundle_root=str(bundle), device="cpu")


def _zoo_torchscript(bundle: Path, config: Path) -> None:
    import tempfile

    from monai.bundle import ckpt_export

    with tempfile.TemporaryDirectory() as tmp:  # the zoo writes models/verify_model.ts; keep the bundle untouched
        ckpt_export(net_id="network_def", filepath=str(Path(tmp) / "verify_model.ts"),
                    ckpt_file=str(bundle / "models" / "model.pt"), meta_file=str(bundle / "configs" / "metadata.json"),
                    config_file=str(config), bundle_root=str(bundle))
    if (bundle / "models" / "model.ts").is_file():
        import torch

        torch.jit.load(str(bundle / "models" / "model.ts"))


def zoo_ci_checks(bundle: str | Path, mode: str = "full", exclusions: str = "none",
                  schema: str | Path | None = None) -> list[Finding]:
    """The steps of the zoo's ``ci/verify_bundle.py`` in its order, as findings: ``passed``, ``skipped`` or
    ``error``. ``min`` stops after the metadata schema, as the zoo's min mode does; ``full`` adds the property check,
    the network built from ``network_def`` and called with the image alone (``verify_net_in_out``), and the TorchScript
    export of the weights (``ckpt_export``). ``exclusions="generative"`` skips what the zoo skips for its generative
    bundles (:data:`ZOO_EXCLUSIONS`); the bundle must then be named in those lists of the zoo's CI."""
    if mode not in ("min", "full"):
        raise ValueError(f"mode must be 'min' or 'full', got {mode!r}")
    if exclusions not in ZOO_EXCLUSIONS:
        raise ValueError(f"exclusions must be one of {sorted(ZOO_EXCLUSIONS)}, got {exclusions!r}")
    bundle = Path(bundle)
    out = check_large_file_downloads(bundle) + check_required_files(bundle)
    out = [f for f in out if f.level == "error"]
    if out or not (bundle / "configs" / "metadata.json").is_file():
        return out
    out.append(Finding("directory", "files and downloads verified", "passed"))
    meta = load_metadata(bundle)
    out += check_version(meta) or [Finding("version", "version and changelog verified", "passed")]
    out += check_requirements_installable(meta) or [Finding("requirements", "every pin installable", "passed")]
    out += check_metadata_schema(bundle, meta, schema) or [Finding("schema", "metadata format verified", "passed")]
    if mode == "min" or any(f.level == "error" for f in out):
        return out
    apps = meta.get("supported_apps") or {}
    out.append(Finding("properties", f"supported_apps {sorted(apps)}: the zoo checks their properties" if apps else
                       "no supported_apps: nothing to check, as in the zoo", "warning" if apps else "passed"))
    config = _find_file(bundle / "configs", "inference")
    sys.path.insert(0, str(bundle))  # as the zoo does, so the bundle's scripts/ import
    try:
        for step, run, label in (("shape", _zoo_shape, "data shape"), ("torchscript", _zoo_torchscript, "TorchScript")):
            if step in ZOO_EXCLUSIONS[exclusions]:
                out.append(Finding(step, f"skip verifying the {label} ({ZOO_LISTS[step]}, as the zoo does for its "
                                         "generative bundles)", "skipped"))
                continue
            try:
                run(bundle, config)
                out.append(Finding(step, f"{label} verified", "passed"))
            except Exception as e:  # noqa: BLE001 - the zoo's script fails here
                message = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
                out.append(Finding(step, f"{label} fails as in the zoo's full mode: {type(e).__name__}: {message}"))
    finally:
        sys.path.remove(str(bundle))
    return out


def verify_bundle(bundle: str | Path, schema: str | Path | None = None, network: bool = True) -> list[Finding]:
    """Every check on one bundle folder; ``network=False`` skips building and running the network."""
    bundle = Path(bundle)
    findings = check_required_files(bundle)
    if not (bundle / "configs" / "metadata.json").is_file():
        return findings
    try:
        meta = load_metadata(bundle)
    except json.JSONDecodeError as e:
        return [*findings, Finding("metadata", f"configs/metadata.json is not valid JSON: {e}")]
    findings += check_version(meta)
    findings += check_metadata_schema(bundle, meta, schema)
    findings += check_network_data_format(meta)
    findings += check_required_packages(bundle, meta)
    findings += check_file_sizes(bundle)
    findings += check_large_files(bundle)
    findings += check_config_keys(bundle)
    if network:
        findings += check_net_in_out(bundle, meta)
        findings += check_exports(bundle, meta)
    return findings


def verify_command(bundle: str | Path, schema: str | Path | None = None, network: bool = True, mode: str = "full",
                   exclusions: str = "none") -> int:
    """Print the zoo CI's steps and medgen's review findings for a bundle (folder or name); 0 if there is no error,
    1 otherwise. Without the network (``network=False``) the zoo part runs in min mode and says so."""
    from medgen.bundles import find_bundle

    bundle_dir = find_bundle(bundle)
    zoo_mode = mode if network else "min"
    zoo = zoo_ci_checks(bundle_dir, zoo_mode, exclusions, schema)
    print(f"zoo CI ({zoo_mode} mode, exclusions: {exclusions}):")
    for finding in zoo:
        print(f"  {finding}")
    seen = {(f.check, f.message) for f in zoo}  # a problem both parts find (a missing file) is shown once
    review = [f for f in verify_bundle(bundle_dir, schema, network) if (f.check, f.message) not in seen]
    print("medgen review:")
    for finding in review or [Finding("review", "no findings", "passed")]:
        print(f"  {finding}")
    findings = zoo + review
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    skipped = [f.check for f in findings if f.level == "skipped"]
    note = f", skipped as for the zoo's generative bundles: {', '.join(skipped)}" if skipped else ""
    print(f"{bundle_dir}: {'FAILED' if errors else 'verified'} in the zoo's {zoo_mode} mode ({errors} error(s), "
          f"{warnings} warning(s){note})")
    return 1 if errors else 0
