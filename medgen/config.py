"""Early checks of bundle config values, so a wrong key stops the run with one clear line, not a traceback.

Called first in a bundle's run list. MONAI's config parser wraps errors raised while it instantiates components
in long tracebacks; a ``SystemExit`` raised here passes through it and prints only the message.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

DATA_HINT = (
    "put the data set there, pass --dataset-dir <dir>, or set MEDGEN_DATA_DIR to the folder that holds "
    "chest_xray_kermany_224/ (see README.md, 'Data')"
)


def fail(message: str) -> None:
    raise SystemExit(f"medgen: error: {message}")


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(f"config key '{name}' must be a positive integer, got {value!r} ({type(value).__name__})")
    return value


def check_classes(classes: Any) -> list[str]:
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        fail(f"config key 'classes' must be a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        fail(f"config key 'classes' has duplicates: {classes}")
    return list(classes)


def check_data_source(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        fail(f"config key 'dataset_dir' must be a path, got {path!r}")
    p = Path(path)
    if not p.exists():
        fail(f"data directory {p} does not exist; {DATA_HINT}")
    return p


def check_types(image_size: Any, batch_size: Any, max_epochs: Any, classes: Any) -> None:
    """Types and ranges of the keys a user most often overrides."""
    check_positive_int("image_size", image_size)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_epochs", max_epochs)
    check_classes(classes)


def check_training(dataset_dir: Any, image_size: Any, batch_size: Any, max_epochs: Any,
                   classes: Sequence[str]) -> None:
    """All checks a training run makes before building anything."""
    check_types(image_size, batch_size, max_epochs, classes)
    check_data_source(dataset_dir)


class StepFailed(SystemExit):
    """A step's one-line message and the exit code ``medgen`` returns for it (1 failed work, 2 bad input)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_exit(code: int, step: str) -> int:
    """Stop a bundle run when a step that returns an exit code (export, send) failed; ``medgen`` exits with it."""
    if code:
        raise StepFailed(f"medgen: error: {step} finished with exit code {code}; see the messages above", code)
    return code


def datalist_or_exit(source: Any, **kwargs: Any) -> dict:
    """``resolve_datalist`` for bundle configs: a data problem (missing folder, unknown or empty class, bad
    CSV) ends the run with its one-line message instead of a traceback through MONAI's config parser."""
    from medgen.data.datalist import DatalistError, resolve_datalist
    from medgen.fileio import DiskFullError

    try:
        return resolve_datalist(check_data_source(source), **kwargs)
    except (DatalistError, DiskFullError) as err:
        fail(str(err))
        raise  # unreachable: fail() raises


# ---- the declarative spec: every user-facing bundle key and what its value must be ------------------------------
#
# MONAI's ConfigParser accepts any key and any value; a typo or a wrong type surfaces (if at all) as a long traceback
# deep in the run. The spec below is checked on the raw config (after overrides) by ``check_config``, the first item
# of every run list of both bundles, and by ``medgen train/sample`` before the workflow is built. A value that is an
# expression (``$...``), a reference (``@...``) or a macro (``%...``) is computed by the config and not checked here.

Rule = Callable[[Any], "str | None"]  # what the value must be, or None when it is fine


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int = 1) -> Rule:
    """An int (not a bool) ``>= lo``."""
    text = "a positive integer" if lo == 1 else f"an integer >= {lo}"
    return lambda v: None if _is_int(v) and v >= lo else f"must be {text}"


def number(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None) -> Rule:
    """A finite int or float within the given bounds."""
    if ge is not None and (le is not None or lt is not None):
        text = f"a number in [{ge:g}, {(le if le is not None else lt):g}{']' if le is not None else ')'}"
    else:
        bounds = [f"{op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
        text = "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def rule(v: Any) -> str | None:
        ok = _is_number(v) and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) \
            and (le is None or v <= le)
        return None if ok else f"must be {text}"
    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def choice(*options: str) -> Rule:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty text"


def path(v: Any) -> str | None:
    return None if isinstance(v, (str, os.PathLike)) and str(v).strip() else "must be a path"


def existing_file(v: Any) -> str | None:
    if path(v):
        return path(v)
    return None if Path(v).is_file() else "must be an existing file"


def optional(rule: Rule) -> Rule:
    """``rule`` or null."""
    def check(v: Any) -> str | None:
        problem = None if v is None else rule(v)
        return problem and f"{problem}, or null"
    return check


def either(a: Rule, literal: str) -> Rule:
    """``a`` or the text ``literal`` (e.g. ``"auto"``)."""
    def check(v: Any) -> str | None:
        problem = None if v == literal else a(v)
        return problem and f"{problem}, or {literal}"
    return check


def window(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) and v[1] > 0
    return None if ok else "must be [centre, width] with width > 0"


def shard(v: Any) -> str | None:
    try:
        i, n = (int(x) for x in (v.split("/") if isinstance(v, str) else v))
        ok = 0 <= i < n
    except (TypeError, ValueError):
        ok = False
    return None if ok else 'must be "i/n" with 0 <= i < n (e.g. "0/4")'


def noise_interval(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) and 0 <= v[0] < v[1]
    return None if ok else "must be two noise levels [low, high] with 0 <= low < high (e.g. [0, 11])"


def int_list(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and v and all(_is_int(x) and x >= 1 for x in v)
    return None if ok else "must be a non-empty list of integers >= 1"


def bool_list(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, bool) for x in v)
    return None if ok else "must be a list of true/false"


BOOL_CLASS_HINT = ("YAML and the command line read no/yes/off/on/false/true as booleans: quote class names, "
                   "e.g. --classes no,yes or \"['no', 'yes']\"")


def class_list(v: Any) -> str | None:
    """A non-empty list of distinct class names (text); a boolean or number in it gets its own hint."""
    if isinstance(v, (list, tuple)) and any(isinstance(x, bool) for x in v):
        return f"must be a list of class names, not booleans ({BOOL_CLASS_HINT})"
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        return "must be a non-empty list of class names (text), e.g. [a, b] or a,b"
    if len(set(v)) != len(v):
        return "must not repeat a class"
    return None


def class_subset(v: Any) -> str | None:
    return None if isinstance(v, str) else class_list(v)


def class_map(v: Any) -> str | None:
    ok = isinstance(v, dict) and v and all(isinstance(k, str) and not class_list(x) for k, x in v.items())
    return None if ok else "must map each class name to a list of folder names, e.g. {tumor: [glioma, meningioma]}"


def utility_sizes(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and v and all(x is None or (_is_int(x) and x >= 1) for x in v)
    return None if ok else "must be a list of images per class (integers >= 1; null = all)"


def positive_steps(v: Any) -> str | None:
    return integer(1)(v)


def res_blocks(v: Any) -> str | None:
    return None if not integer(1)(v) or not int_list(v) else "must be a positive integer or a list of them"


def window_preset(v: Any) -> str | None:
    from medgen.data.dicom import WINDOW_PRESETS

    return None if v in WINDOW_PRESETS else f"must be one of {', '.join(sorted(WINDOW_PRESETS))}"


SPEC: dict[str, Rule] = {
    # where things are
    "bundle_root": path, "dataset_dir": path, "output_dir": path, "ckpt_dir": path, "model_path": path,
    "ckpt_path": path, "runs_dir": path, "run_name": optional(text), "export_to_bundle": boolean,
    "init_weights": optional(existing_file), "export_dir": path, "eval_dir": path, "samples_dir": optional(path),
    # data
    "classes": class_list, "source_classes": class_list, "class_map": optional(class_map),
    "class_names": optional(class_subset),
    "image_size": integer(1), "channels": integer(1), "resize_mode": choice("crop", "pad", "stretch"),
    "window": optional(window), "window_preset": optional(window_preset),
    "max_items_per_class": optional(integer(1)), "cache_rate": number(ge=0, le=1), "num_workers": integer(0),
    "seed": integer(0), "val_fraction": number(ge=0, lt=1), "test_fraction": number(ge=0, lt=1), "augment": boolean,
    # model and diffusion
    "num_train_timesteps": integer(1), "prediction_type": choice("epsilon", "v_prediction", "sample"),
    "label_dropout": number(ge=0, lt=1), "unet_channels": int_list, "attention_levels": bool_list,
    "num_res_blocks": res_blocks, "norm_num_groups": integer(1),
    "sigma_max": number(gt=0), "sigma_min": number(gt=0), "sigma_data": number(ge=0), "skip_connection": boolean,
    # training objective (medgen.diffusion.objectives)
    "loss_weighting": choice("none", "min_snr"), "min_snr_gamma": number(gt=0),
    "timestep_sampling": choice("uniform", "lognormal"), "lognormal_mean": number(), "lognormal_std": number(gt=0),
    "preconditioning": choice("none", "edm"), "edm_sigma_data": number(gt=0),
    # latent diffusion (medgen.latent) and its autoencoder (medgen.autoencoder)
    "autoencoder_path": optional(path), "latent_channels": integer(1), "latent_size": optional(integer(1)),
    "scale_factor": optional(number(gt=0)), "autoencoder_channels": int_list, "kl_weight": number(ge=0),
    "perceptual_weight": number(ge=0), "adv_weight": number(ge=0), "adv_warmup_iters": integer(0),
    "grid_interval": integer(0), "discriminator_channels": integer(1), "discriminator_layers": integer(1),
    "crop_size": optional(integer(0)), "train_encoder": boolean,
    # optimisation
    "batch_size": either(integer(1), "auto"), "learning_rate": number(gt=0), "max_epochs": integer(1),
    "gradient_accumulation": integer(1), "fused_optimizer": boolean, "class_balanced": boolean,
    "lr_schedule": choice("constant", "cosine"), "lr_warmup_iters": integer(0), "lr_final_factor": number(ge=0, le=1),
    "lr_total_iters": optional(integer(1)),
    "precision": choice("auto", "bf16", "fp16", "fp32"),
    "ema_decay": number(ge=0, lt=1), "ema_warmup_iters": integer(0), "checkpoint_interval": integer(1),
    "sample_interval": integer(1), "samples_per_class_in_grid": integer(1), "grid_inference_steps": positive_steps,
    "grid_sampler": text,
    "resume": boolean, "redact_paths": boolean, "time_limit": optional(number(gt=0)),
    "max_iterations": optional(integer(1)),
    "fid_interval": integer(0),
    "fid_features": choice("domain", "inception"), "fid_per_class": integer(2),
    # experiment tracking
    "tensorboard_dir": optional(path), "mlflow_tracking_uri": optional(text), "mlflow_experiment": text,
    # sampling
    "per_class": integer(1), "sampler": text, "num_inference_steps": positive_steps,
    "guidance_scale": number(ge=0), "guidance_interval": optional(noise_interval), "shard": optional(shard),
    "n_steps_each": positive_steps,
    "snr": optional(number(gt=0)), "step_lr": number(gt=0), "denoise": boolean,
    "quality_gate": optional(existing_file), "domain_weights": optional(existing_file),
    "guide_path": optional(either(existing_file, "none")),
    # export and evaluation
    "export_format": optional(choice("dicom", "png", "png16", "nifti")), "dicom_iod": choice("sc", "cr", "mr", "vlm"),
    "uid_root": optional(text), "send_to": optional(text), "max_real_per_class": optional(integer(1)),
    "utility_sizes": optional(utility_sizes), "classifier_size": integer(8),
    "num_eval_levels": integer(1),
}

#: arguments of ``python -m monai.bundle run`` itself, accepted beside the config's own keys
MONAI_RUN_ARGS = frozenset({
    "config_file", "meta_file", "logging_file", "args_file", "run_id", "init_id", "final_id", "tracking",
    "workflow_name", "workflow_type", "properties_path",
})
#: override keys MONAI's experiment tracking (``--tracking mlflow``) reads
TRACKING_KEYS = frozenset({"tracking_uri", "experiment_name", "run_name", "save_execute_config", "output_dir"})


def _computed(value: Any) -> bool:
    """An expression, reference or macro: its value is computed by the config, not given literally."""
    return isinstance(value, str) and value[:1] in ("$", "@", "%")


def _literal(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    return None if _computed(value) else value


def _cross_checks(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Checks between keys (each value already passed its own rule): ``(key, problem)`` pairs."""
    problems: list[tuple[str, str]] = []
    get = partial(_literal, config)
    size, chans = get("image_size"), get("unet_channels")
    if _is_int(size) and isinstance(chans, (list, tuple)) and chans and not int_list(chans):
        factor = 2 ** (len(chans) - 1)
        if size % factor:
            problems.append(("image_size", f"must be a multiple of {factor} (the network halves the image "
                                           f"{len(chans) - 1} times: len(unet_channels) - 1), got {size}; try "
                                           f"{max(factor, round(size / factor) * factor)}"))
    network = config.get("network_def")
    heads = network.get("num_head_channels") if isinstance(network, Mapping) else None
    levels = get("attention_levels")
    if _is_int(heads) and heads > 0 and isinstance(chans, (list, tuple)) and not int_list(chans):
        # attention blocks (where attention_levels is true, and always the middle block) split channels into heads
        attended = [c for c, a in zip(chans, levels) if a] if isinstance(levels, (list, tuple)) else []
        attended.append(chans[-1])
        if any(c % heads for c in attended):
            problems.append(("unet_channels", f"must be multiples of network_def#num_head_channels ({heads}) at the "
                                              f"attention levels and the last level, got {list(chans)}; or pass "
                                              f"--network_def#num_head_channels {math.gcd(*attended)}"))
    if isinstance(chans, (list, tuple)) and isinstance(levels, (list, tuple)) and len(levels) != len(chans):
        problems.append(("attention_levels", f"must have one entry per unet_channels level ({len(chans)})"))
    groups = get("norm_num_groups")
    if _is_int(groups) and isinstance(chans, (list, tuple)) and not int_list(chans) and any(c % groups for c in chans):
        problems.append(("norm_num_groups", f"must divide every unet_channels entry {list(chans)}"))
    val, test = get("val_fraction"), get("test_fraction")
    if _is_number(val) and _is_number(test) and val + test >= 1:
        problems.append(("test_fraction", f"must leave a training share: val_fraction + test_fraction is "
                                          f"{val + test:g}, must be below 1"))
    lo, hi = get("sigma_min"), get("sigma_max")
    if _is_number(lo) and _is_number(hi) and lo >= hi:
        problems.append(("sigma_min", f"must be below sigma_max ({hi:g})"))
    steps, timesteps = get("num_inference_steps"), get("num_train_timesteps")
    if _is_int(steps) and _is_int(timesteps) and steps > timesteps:
        problems.append(("num_inference_steps", f"must be at most num_train_timesteps ({timesteps})"))
    crop = get("crop_size")
    if _is_int(crop) and _is_int(size) and crop > size:
        problems.append(("crop_size", f"must be at most image_size ({size}), or 0 for whole images, got {crop}"))
    if get("train_encoder") is False and "init_weights" in config and get("init_weights") is None:
        problems.append(("train_encoder", "false needs init_weights: a frozen encoder must come from trained "
                                          "autoencoder weights (--init_weights <model_autoencoder.pt>)"))
    if get("batch_size") == "auto" and "train" in config:
        problems.append(("batch_size", "must be a positive integer for training (auto is for sampling)"))
    names, classes = get("class_names"), get("classes")
    if names and isinstance(classes, (list, tuple)) and not class_list(classes) and not class_subset(names):
        unknown = [n for n in ([names] if isinstance(names, str) else names) if n not in classes]
        if unknown:
            problems.append(("class_names", f"must name classes of the model {list(classes)}; unknown: {unknown}"))
    sampler, pipeline = get("sampler"), config.get("pipeline")
    target = str(pipeline.get("_target_", "")) if isinstance(pipeline, Mapping) else ""
    if isinstance(sampler, str) and target:
        if target.endswith("LangevinPipeline"):
            from medgen.diffusion.langevin import SAMPLERS as known
        else:
            from medgen.diffusion.pipeline import SAMPLERS, _extra_samplers

            known = (*SAMPLERS, *_extra_samplers())
        if sampler.lower() not in known:
            problems.append(("sampler", f"must be one of {', '.join(sorted(known))}"))
    grid_sampler = get("grid_sampler")
    if isinstance(grid_sampler, str) and "LangevinPipeline" in str(config.get("sampling_pipeline", "")):
        from medgen.diffusion.langevin import SAMPLERS as known

        if grid_sampler not in known:
            problems.append(("grid_sampler", f"must be one of {', '.join(sorted(known))}"))
    return problems


def config_problems(config: Mapping[str, Any], aliases: Mapping[str, str] | None = None) -> list[str]:
    """One line per key whose literal value breaks :data:`SPEC` or a check between keys (empty when all is well)."""
    aliases = aliases or {}

    def name(key: str) -> str:
        return f"'{key}' ({aliases[key]})" if key in aliases else f"'{key}'"

    lines = []
    for key, rule in SPEC.items():
        if key in config and not _computed(config[key]):
            problem = rule(config[key])
            if problem:
                lines.append(f"config key {name(key)} {problem}, got {config[key]!r}")
    if not lines:
        lines = [f"config key {name(key)} {problem}" if ", got " in problem else
                 f"config key {name(key)} {problem}, got {config[key]!r}" for key, problem in _cross_checks(config)]
    return lines


def unknown_keys(overrides: Iterable[str], config: Mapping[str, Any], tracking: bool = False) -> list[str]:
    """One line per override key that names nothing in ``config`` (the file(s) being run), with the closest key.

    Nested ids (``train#trainer#max_epochs``) are followed level by level.
    """
    lines = []
    for key in overrides:
        if key in MONAI_RUN_ARGS or key.startswith("_meta_") or (tracking and key in TRACKING_KEYS):
            continue
        node: Any = config
        parts = key.replace("::", "#").split("#")
        for depth, part in enumerate(parts):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                prefix = "#".join(parts[:depth])
                names = [str(k) for k in node] if isinstance(node, Mapping) else []
                close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
                hint = f" (did you mean '{prefix + '#' if prefix else ''}{close[0]}'?)" if close else \
                    " (`medgen train BUNDLE --help` / `medgen sample BUNDLE --help` list the keys)"
                lines.append(f"unknown config key '{key}'{hint}")
                break
    return lines


def check_values(config: Mapping[str, Any], overrides: Iterable[str] = (), aliases: Mapping[str, str] | None = None,
                 file_config: Mapping[str, Any] | None = None, tracking: bool = False) -> None:
    """Stop with one line per problem: unknown ``overrides`` (when ``file_config`` is given), then bad values."""
    lines = unknown_keys(overrides, file_config, tracking) if file_config is not None else []
    lines = lines or config_problems(config, aliases)
    if lines:
        raise SystemExit("\n".join(f"medgen: error: {line}" for line in lines))


def load_config_files(files: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The merged raw content of one or more config files, as MONAI merges them (later files win key by key)."""
    from monai.bundle import ConfigParser

    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return ConfigParser.load_config_files([str(f) for f in files])


def check_run(config_files: str | os.PathLike | Sequence[str | os.PathLike], overrides: Mapping[str, Any],
              aliases: Mapping[str, str] | None = None) -> None:
    """``medgen train/sample``: check override keys and every value before the workflow is built."""
    from monai.bundle import ConfigParser

    file_config = load_config_files(config_files)
    parser = ConfigParser(copy.deepcopy(file_config))
    parser.update(dict(overrides))
    check_values(parser.get(), overrides, aliases, file_config)


def _monai_run_frame() -> tuple[Any, dict[str, Any] | None, Any, bool, list[str]]:
    """From the frames of the running ``monai.bundle`` call: its ConfigParser, override dict, config files, whether
    tracking is on, and the keys given as ``None`` (which MONAI's ``update_kwargs(ignore_none=True)`` drops before
    they reach the config). MONAI passes neither the parser nor the overrides to a config expression, so they are
    read from its ``run`` / ``create_workflow`` frames (written here because MONAI has no hook for it)."""
    import inspect

    from monai.bundle import ConfigParser, scripts

    run_code = inspect.unwrap(scripts.run).__code__
    create_code = inspect.unwrap(scripts.create_workflow).__code__
    parser = overrides = files = None
    tracking = False
    dropped: list[str] = []
    frame = sys._getframe(1)
    while frame is not None:
        local = frame.f_locals
        if parser is None and isinstance(local.get("self"), ConfigParser):
            parser = local["self"]
        if frame.f_code is run_code:
            dropped = [str(k) for k, v in (local.get("override") or {}).items() if v is None]
        if overrides is None and frame.f_code is create_code:
            overrides = dict(local.get("_args") or {})
            files = local.get("config_file")
            tracking = bool(overrides.get("tracking"))
        elif overrides is None and frame.f_code is run_code:
            overrides = dict(local.get("override") or {})
            if local.get("args_file"):
                overrides = {**ConfigParser.load_config_file(local["args_file"]), **overrides}
            files = local.get("config_file") or overrides.get("config_file")
            tracking = bool(local.get("tracking") or overrides.get("tracking"))
        frame = frame.f_back
    return parser, overrides, files, tracking, dropped


def dropped_none_problems(parser: Any, dropped: Iterable[str]) -> list[str]:
    """One line per key given as ``--key None`` on ``monai.bundle run`` whose config value is not None: MONAI
    drops the override, so the run would silently use the config's value. ``parser`` is the run's ``ConfigParser``,
    whose ``get`` follows nested ids (``network_def#num_head_channels``, ``a::b``, list indices)."""
    lines = []
    for key in dropped:
        value = parser.get(key)
        if value is not None:
            lines.append(f"config key '{key}': --{key} None is dropped by monai.bundle (it ignores None overrides), "
                         f"so the config's {value!r} would be used; give the key's documented 'off' value, or "
                         f"null in a config file passed after the bundle's (--config_file \"['train.yaml', "
                         f"'mine.yaml']\")")
    return lines


def check_config() -> None:
    """First item of every run list of the bundles: check the config (with its overrides) against :data:`SPEC`.

    Under ``python -m monai.bundle run`` (or ``monai.bundle.run(...)``) the override keys are also checked against
    the top-level keys of the config file(s) being run, with a "did you mean" suggestion, and ``--key None``, which
    MONAI drops, is refused where the config's value is not None. ``medgen train/sample``
    make the same checks (:func:`check_run`) before the workflow is built.
    """
    parser, overrides, files, tracking, dropped = _monai_run_frame()
    if parser is None:
        return
    lines = dropped_none_problems(parser, dropped)
    if lines:
        raise SystemExit("\n".join(f"medgen: error: {line}" for line in lines))
    file_config = load_config_files(files) if overrides is not None and files else None
    check_values(parser.get(), overrides or (), file_config=file_config, tracking=tracking)


# ---- `medgen train/sample --help`: the bundle's keys, their defaults and the comment of their line ------------------

_KEY_LINE = re.compile(r"^([A-Za-z_][\w#]*):(.*?)(?:\s+#\s*(.*))?$")
NOT_KEYS = frozenset({"imports", "initialize", "run", "training", "inference", "evaluate", "finalize"})


def _plain(value: Any) -> bool:
    """A literal value or a nesting of them (no component, expression or reference)."""
    if isinstance(value, Mapping):
        return "_target_" not in value and all(_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return not _computed(value)


def config_keys_help(config_path: str | os.PathLike) -> str:
    """``  --key default   comment`` for every plain top-level key of a bundle config (components are left out)."""
    import yaml

    config = yaml.safe_load(Path(config_path).read_text()) or {}
    comments: dict[str, str] = {}
    for line in Path(config_path).read_text().splitlines():
        m = _KEY_LINE.match(line)
        if m and m.group(3):
            comments[m.group(1)] = m.group(3).strip()
    rows = []
    for key, value in config.items():
        if key in NOT_KEYS or "#" in key or (key not in SPEC and (_computed(value) or not _plain(value))):
            continue  # components and internal expressions are not for the command line
        if _computed(value):
            shown = "(from the weights)" if "meta_value(" in value else "(computed)"
        else:
            shown = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
        rows.append((f"--{key.replace('_', '-')} {shown}", comments.get(key, "")))  # the documented spelling
    width = min(44, max((len(r[0]) for r in rows), default=0))
    return "\n".join(f"  {a:<{width}}  {b}".rstrip() if len(a) <= width else f"  {a}\n  {'':<{width}}  {b}".rstrip()
                     for a, b in rows)
