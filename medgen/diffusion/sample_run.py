"""Generate images per class into a samples folder: PNGs, a grid per class and ``samples.jsonl``.

Images are written as they are made (memory stays flat), each with a metadata line (class, seed, sampler, steps,
guidance and its interval, checkpoint sha256, timestamp; the guide and its sha256 under autoguidance). A rerun into
the same folder skips seeds already written; one with other weights, another guide or other sampling settings is
refused, and so is a folder of files no sampling job wrote (a data set's class folders, a training run), so that
synthetic images never land among real ones.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medgen.data.image_io import atomic_save, make_grid, save_png
from medgen.diffusion.pipeline import DiffusionPipeline
from medgen.fileio import atomic_write, write_json_atomic
from medgen.networks.weights_meta import (
    MissingWeightsError,
    WeightsFileError,
    check_against,
    meta_value,
    read_meta,
    sha256_of,
)

logger = logging.getLogger(__name__)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy (pre-1.6) torch.save format starts with a pickle protocol byte


def check_weights_file(path: str | Path) -> Path:
    """``path`` if it is a readable PyTorch file, else :class:`WeightsFileError` naming the file and the problem.

    Cheap: a zip file's records are checked against their CRC-32 and its pickle read with the tensors mapped, not
    loaded (:func:`medgen.engine.checkpoints.inspect_checkpoint`, the check that resume uses).
    """
    from medgen.engine.checkpoints import inspect_checkpoint

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(path, "missing", "no such file",
                                  "train the bundle first (medgen train BUNDLE) or give a model.pt with --ckpt "
                                  "(medgen sample) or --ckpt-path (python -m monai.bundle run)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        return path  # legacy format: torch.load in load_weights reports what is wrong with it
    if head != _ZIP_MAGIC:
        raise WeightsFileError(path, "not a PyTorch weights file",
                               f"{path.stat().st_size} bytes starting {head!r}, not a zip archive",
                               "give the model.pt or checkpoint that training wrote")
    _, problem = inspect_checkpoint(path)
    if problem is None:
        return path
    if problem.startswith("truncated or not a PyTorch checkpoint"):  # a zip file without its end record
        problem = f"{path.stat().st_size} bytes; the end of its zip archive is missing"
    damaged = "missing" in problem or "CRC" in problem or "central directory" in problem
    raise WeightsFileError(path, "truncated or damaged" if damaged else "not a PyTorch weights file", problem,
                           "copy the file again (compare its sha256 with model.json) or retrain"
                           if damaged else "give the model.pt or checkpoint that training wrote")


def _state_dict_of(state: Any, path: Path, key: str | None) -> Mapping[str, torch.Tensor]:
    """The network's state dict in a loaded file: ``state[key]``, else the EMA or model entry of a checkpoint."""
    if not isinstance(state, Mapping):
        raise WeightsFileError(path, "not a PyTorch weights file", f"it holds a {type(state).__name__}, not a "
                               "state dict", "give the model.pt or checkpoint that training wrote")
    if key is not None:
        if key not in state:
            raise WeightsFileError(path, "weights of another network", f"no entry {key!r}; entries: "
                                   f"{', '.join(map(str, list(state)[:8]))}", "give a checkpoint that has it")
        return state[key]
    for entry in ("ema", "model"):
        if isinstance(state.get(entry), Mapping):
            return state[entry]
    return state


def _mismatch(network: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """What keeps ``state`` from loading strictly into ``network`` (missing/unexpected keys, shapes), or None."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]

    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = [f"{len(missing)} missing keys: {few(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {few(unexpected)}" if unexpected else "",
             f"{len(shapes)} shape mismatches (file vs network): {few(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p) or None


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - whatever torch says, the file is not loadable weights
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsFileError(path, "not a PyTorch weights file", first,
                               "give the model.pt or checkpoint that training wrote") from err


def verify_weights(network: torch.nn.Module, path: str | Path, key: str | None = None,
                   expect: Mapping[str, Any] | None = None, mmap: bool = True) -> Mapping[str, torch.Tensor]:
    """The state dict in ``path`` for ``network``, checked as :func:`load_weights` checks it, not loaded into it.

    With ``mmap`` (zip files) the tensors are mapped, not read, so the check is cheap.
    """
    path = check_weights_file(path)
    if expect is not None:
        check_against(read_meta(path), expect, path, network)
    with open(path, "rb") as f:
        zipped = f.read(4) == _ZIP_MAGIC
    state = _state_dict_of(_torch_load(path, mmap and zipped), path, key)
    problem = _mismatch(network, state)
    if problem:
        raise WeightsFileError(path, "weights of another network", problem,
                               "use the bundle and settings they were trained with (their model.json) or "
                               "other weights")
    return state


def load_weights(network: torch.nn.Module, path: str | Path, key: str | None = None,
                 expect: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Load a state dict (or ``checkpoint[key]``, else a checkpoint's EMA or model) into ``network`` strictly.

    A missing, truncated or damaged file, a file that is not PyTorch's, or weights of another network raise
    :class:`WeightsFileError` (a ``ValueError``) with one line naming the file and the problem; ``medgen sample``
    prints it and exits 2. With ``expect`` (bundle keys -> the values the config will use: classes, image size,
    ...) the weights' metadata (:mod:`medgen.networks.weights_meta`) is checked first: a value or a network
    argument that differs from what the weights were trained with stops the run with one line.
    """
    network.load_state_dict(verify_weights(network, path, key, expect, mmap=False))
    return network


def objective_of(path: str | Path, meta: Any = None) -> dict[str, Any]:
    """The training keys that fix what the weights' output means, as their metadata (``meta``, else read beside
    ``path``) records them (absent keys are the plain MONAI objective): pass them to a training that fine-tunes
    these weights."""
    meta = read_meta(path, warn=False) if meta is None else meta
    preconditioning = meta_value(meta, "preconditioning", "none") or "none"
    return {"prediction_type": meta_value(meta, "prediction_type", "epsilon"), "preconditioning": preconditioning,
            "timestep_sampling": meta_value(meta, "timestep_sampling",
                                            "uniform" if preconditioning == "none" else "lognormal"),
            "loss_weighting": meta_value(meta, "loss_weighting", "none")}


def load_init_weights(network: torch.nn.Module, path: str | Path, prediction_type: str = "epsilon",
                      preconditioning: str | None = "none") -> torch.nn.Module:
    """``init_weights`` of a training config: fine-tuning must continue the objective the weights were trained with
    (what their output means), so a prediction type or preconditioning other than the weights' metadata records
    (absent = ``epsilon`` / ``none``) ends the run with one line before any training; then :func:`load_weights`."""
    from medgen.config import fail

    meta = read_meta(path, warn=False)
    if meta:
        trained = objective_of(path, meta)
        wanted = {"prediction_type": prediction_type, "preconditioning": preconditioning or "none"}
        diffs = [f"{key} {trained[key]} (weights) vs {wanted[key]} (config)" for key in wanted
                 if trained[key] != wanted[key]]
        if diffs:
            fail(f"init_weights {path} was trained with another objective: {'; '.join(diffs)}; fine-tune with the "
                 f"weights' own: " + " ".join(f"--{k} {v}" for k, v in trained.items()))
    return load_weights(network, path)


def check_weights_or_exit(network: torch.nn.Module, path: str | Path, expect: Mapping[str, Any] | None = None) -> None:
    """For a bundle's run list, before the network is loaded: unusable weights end the run with one line
    (``SystemExit``), not a traceback through MONAI's config parser."""
    from medgen.config import fail

    try:
        verify_weights(network, path, expect=expect)
    except WeightsFileError as err:
        fail(str(err))


def plan_seeds(classes: Sequence[str], selected: Sequence[str] | None, per_class: int, seed: int,
               shard: tuple[int, int] = (0, 1)) -> list[tuple[int, int]]:
    """``(label, seed)`` pairs: seeds ``seed + k`` numbered over the whole job, so none repeat; a shard ``(i, n)``
    takes every n-th pair starting at i, and the n shards together make exactly the unsharded job."""
    names = list(selected) if selected else list(classes)
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; the model's classes are {list(classes)}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    pairs = [(classes.index(n), seed + k * per_class + i) for k, n in enumerate(names) for i in range(per_class)]
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is not valid: need 0 <= i < n")
    return pairs[index::count]


def parse_shard(shard: str | Sequence[int] | None) -> tuple[int, int]:
    if shard is None or shard == "":
        return (0, 1)
    if isinstance(shard, str):
        i, _, n = shard.partition("/")
        return (int(i), int(n))
    return (int(shard[0]), int(shard[1]))


def samples_role(index: int, count: int) -> str:
    """The samples folder's lock role of shard ``index`` of ``count`` (``samples`` for an unsharded job)."""
    return "samples" if count == 1 else f"samples-shard-{index}of{count}"


def shard_count(role: str) -> int | None:
    """How many shards the job holding ``role`` belongs to (1 unsharded); None for a role that is not a samples one."""
    if role == "samples":
        return 1
    match = re.fullmatch(r"samples-shard-\d+of(\d+)", role)
    return int(match.group(1)) if match else None


def sharded_otherwise(count: int) -> Callable[[str], bool]:
    """Whether a lock role is a samples job's sharded otherwise than into ``count`` parts (its seeds overlap)."""
    return lambda role: shard_count(role) not in (None, count)


def gated_todo(pairs: Sequence[tuple[int, int]], done: set[tuple[int, int]], seed: int,
               shard: tuple[int, int] = (0, 1)) -> list[tuple[int, int]]:
    """What a job through a quality gate still has to make: per class, as many images as its plan ``pairs`` hold,
    less those of this shard already on disk (from ``seed`` on), on seeds past every seed this shard kept. A gate
    keeps replacements (fresh seeds) instead of the planned seeds, so a rerun counts images by class rather than
    matching seeds; the seeds of shard i of n are ``seed + i + n j``, so shards never make the same image. Images
    on seeds below ``seed`` (a job with an earlier ``--seed``) are not this job's: it adds its own, as unfiltered."""
    index, count = shard
    mine = [(label, s) for label, s in done if s >= seed and (s - seed) % count == index]
    start = max((s for _, s in mine), default=None)
    start = min((s for _, s in pairs), default=seed) if start is None else start + count
    need = Counter(label for label, _ in pairs)
    need.subtract(label for label, _ in mine if label in need)
    labels = [label for label, n in need.items() for _ in range(max(n, 0))]
    return [(label, start + count * j) for j, label in enumerate(labels)]


def check_numbering(plan: Sequence[tuple[int, int]], done: set[tuple[int, int]], classes: Sequence[str],
                    folder: Path) -> None:
    """Refuse a job whose seeds the folder's images were numbered with otherwise: an image on disk whose seed this
    job's ``plan`` gives to another class. Seeds run ``seed + class index * per_class + i``, so a folder sampled with
    another ``--per-class`` (or class selection) would get the planned seeds of each class again besides its own,
    and hold more images of a class than asked."""
    owner = {s: label for label, s in plan}
    if not owner:
        return
    low, high = min(owner), max(owner)
    selected = set(owner.values())
    for label, s in sorted(done, key=lambda pair: pair[1]):
        if label in selected and low <= s <= high and owner.get(s, label) != label:
            top = max(seed for _, seed in done)
            raise ValueError(f"{folder} holds {classes[label]} seed {s}, which this job numbers as a "
                             f"{classes[owner[s]]} image: the folder was sampled with another --per-class or --class "
                             f"(seeds run seed + class index x per-class + i); give the ones it was made with, add "
                             f"images with --seed {top + 1} or more, or write to another folder (--out DIR, "
                             "--output_dir DIR)")


def with_earlier_counts(quality: dict, path: Path) -> dict:
    """``quality`` with the generated and rejected counts of the earlier runs of the same job into the folder (the
    ``path`` they wrote) added: a resumed job's file covers every image made, not only the last run's."""
    if not path.is_file():
        return quality
    try:
        earlier = json.loads(path.read_text())
        counts = int(earlier["generated"]), int(earlier["rejected"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a quality record ({err}); move it away to count from now on") from None
    if earlier.get("quality_gate") != quality.get("quality_gate"):
        raise ValueError(f"{path} counts images through the gate {earlier.get('quality_gate')}, this run "
                         f"{quality.get('quality_gate')}: write to another folder (--out DIR, --output_dir DIR)")
    return {**quality, "generated": quality["generated"] + counts[0], "rejected": quality["rejected"] + counts[1]}


#: the name of an image a sampling job writes into a class folder (and its float copy): ``<seed>.png``, ``.npy``
_SAMPLE_NAME = re.compile(r"^\d{6,}\.(png|npy)$")


def foreign_file(output_dir: str | Path, classes: Sequence[str]) -> str | None:
    """A file in ``output_dir`` that no sampling job wrote (its path in the folder), or None. Without a
    ``samples.jsonl`` the folder is no samples folder, and any file counts (lock and temporary files aside); with one,
    a file in a class folder that the records do not name and that is not named as a job's images are (an image of
    a job cut short before its record)."""
    from medgen.fileio import is_temp_file
    from medgen.folder_lock import is_lock_file

    def written_by_a_job(name: str) -> bool:
        return is_lock_file(name) or is_temp_file(name)

    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    if not (folder / "samples.jsonl").is_file():
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                if not written_by_a_job(name):
                    return Path(root, name).relative_to(folder).as_posix()
        return None
    # each record's image, without its suffix: the .png and its .npy copy
    recorded = {str(Path(r["file"]).with_suffix("")) for r in sample_records(folder)}
    for name in classes:
        if not (folder / name).is_dir():
            continue
        for path in sorted((folder / name).iterdir()):
            named = written_by_a_job(path.name) or _SAMPLE_NAME.match(path.name)
            if not named and str(Path(name, path.name).with_suffix("")) not in recorded:
                return f"{name}/{path.name}"
    return None


def latest_records(records: Iterable[dict | None]) -> list[dict]:
    """One record per image file, the last one written, in the order the files first appear: a seed whose image was
    deleted is made again by the next run into the folder, which appends a second record for the same file (the
    file is appended to by every shard of a job, so it is never rewritten). Lines that are not records are left
    out."""
    latest: dict[str, dict] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("file"), str):
            latest[record["file"]] = record  # a dict keeps the first position of a key it updates
    return list(latest.values())


def sample_records(output_dir: str | Path) -> list[dict]:
    """The records of a samples folder's ``samples.jsonl``, one per image file (:func:`latest_records`); a line cut
    by a crash is left out (its image is made again); none without the file."""
    path = Path(output_dir) / "samples.jsonl"
    if not path.is_file():
        return []
    parsed = []
    for line in path.read_text().splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return latest_records(parsed)


def seeds_on_disk(output_dir: str | Path) -> set[tuple[int, int]]:
    """(label, seed) of every image a samples folder holds: a record in its ``samples.jsonl`` whose file exists (a
    rerun skips these)."""
    return {(r["label"], r["seed"]) for r in sample_records(output_dir) if (Path(output_dir) / r["file"]).is_file()}


class SampleRunner:
    """The bundle's inference step: generate ``per_class`` images for each class into ``output_dir``.

    Args:
        pipeline: a :class:`DiffusionPipeline` over the trained network.
        output_dir: the samples folder.
        per_class: images per class.
        class_names: classes to generate (default: all).
        seed: first seed; image k of the job gets ``seed + k``.
        sampler, num_inference_steps, guidance_scale: sampling settings recorded per image.
        checkpoint: weights file, hashed into the metadata.
        shard: ``"i/n"`` to make only the i-th of n interleaved parts (for several processes or machines).
        save_npy: also write the float image in [0, 1] as ``.npy`` beside each PNG (lossless for DICOM export).
        quality_gate: a gate fitted by ``medgen fit-gate`` (``.npz``): images whose realism score fails it are
            replaced by new ones (fresh seeds) until the requested count passes; each line records its
            ``realism_score`` and ``quality.json`` the rejection rate.
        domain_weights: the domain classifier whose features the gate was fitted on.
    """

    def __init__(self, pipeline: DiffusionPipeline, output_dir: str | Path, per_class: int = 8,
                 class_names: Sequence[str] | None = None, seed: int = 0, sampler: str = "ddim",
                 num_inference_steps: int = 50, guidance_scale: float = 1.0, checkpoint: str | Path | None = None,
                 shard: str | Sequence[int] | None = None, save_npy: bool = True, grid_size: int = 16,
                 quality_gate: str | Path | None = None, domain_weights: str | Path | None = None) -> None:
        self.pipeline = pipeline
        self.output_dir = Path(output_dir)
        self.per_class = int(per_class)
        self.class_names = [class_names] if isinstance(class_names, str) else class_names
        self.seed = int(seed)
        self.sampler = sampler
        self.steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.shard = parse_shard(shard)
        self.save_npy = save_npy
        self.grid_size = grid_size
        self.quality_gate = str(quality_gate) if quality_gate else None
        self.domain_weights = str(domain_weights) if domain_weights else None

    @property
    def gate_path(self) -> str | None:
        """The quality gate's absolute path, as each image it passed records it (None without a gate)."""
        return str(Path(self.quality_gate).resolve()) if self.quality_gate else None

    @property
    def quality_file(self) -> Path:
        """The rejection counts of this job's images through the gate: ``quality.json``, one per shard when sharded
        (shards write side by side)."""
        index, count = self.shard
        return self.output_dir / ("quality.json" if count == 1 else f"quality-shard-{index}of{count}.json")

    @property
    def guide_file(self) -> Path | None:
        """The weights file of the pipeline's autoguidance guide (:func:`medgen.diffusion.guide.load_guide`), if any."""
        path = getattr(getattr(self.pipeline, "guide_network", None), "weights_file", None)
        return Path(path) if path else None

    @property
    def guidance_interval(self) -> list[float] | None:
        """The pipeline's guidance interval ``[low, high]`` (σ), as each image's record holds it; None: every step."""
        interval = getattr(self.pipeline, "guidance_interval", None)
        return [float(v) for v in interval] if interval is not None else None

    def done_seeds(self) -> set[tuple[int, int]]:
        return seeds_on_disk(self.output_dir)

    def check_folder_matches(self, sha: str | None, guide_sha: str | None = None) -> None:
        """Refuse to add to a samples folder that holds images of other weights, of another guide, made with other
        sampling settings or through another quality gate, or none (a rerun skips the seeds already there, so the
        folder would mix them)."""
        path = self.output_dir / "samples.jsonl"
        if not path.is_file():
            return
        ours = {"sampler": self.sampler, "steps": self.steps, "guidance_scale": self.guidance_scale,
                "guidance_interval": self.guidance_interval, "guide_sha256": guide_sha, "quality_gate": self.gate_path}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            other = record.get("checkpoint_sha256")
            if sha and other and other != sha:
                raise ValueError(f"{self.output_dir} holds samples of other weights (checkpoint sha256 "
                                 f"{other[:12]}..., these are {sha[:12]}...): write to another folder "
                                 "(--out DIR, --output_dir DIR)")
            theirs = {key: record.get(key) for key in ours}
            diffs = [f"{key} {_brief(theirs[key])} there vs {_brief(ours[key])} now" for key in ours
                     if theirs[key] != ours[key]]
            if diffs:
                raise ValueError(f"{self.output_dir} holds samples made otherwise ({'; '.join(diffs)}): write to "
                                 "another folder (--out DIR, --output_dir DIR)")

    def run(self) -> Path:
        """Generate, write and return the path of ``samples.jsonl``.

        The samples folder (one shard of it) is this process's meanwhile: a second job making the same seeds into it
        would write them twice, so it stops with one line. Shards of one job write one folder side by side; a job
        sharded otherwise (unsharded, or into another number of shards) would make seeds a running shard makes, so
        it stops too."""
        from medgen.config import fail
        from medgen.folder_lock import FolderInUseError, claim_folder

        index, count = self.shard
        role = samples_role(index, count)
        try:
            with claim_folder(self.output_dir, role, "write to another folder (--out DIR, --output_dir DIR)",
                              conflicts=sharded_otherwise(count)):
                return self._run()
        except FolderInUseError as err:
            fail(f"cannot sample: {err}")
            raise AssertionError from err  # unreachable: fail() raises

    def _run(self) -> Path:
        classes = self.pipeline.classes
        pairs = plan_seeds(classes, self.class_names, self.per_class, self.seed, self.shard)
        other = foreign_file(self.output_dir, classes)
        if other is not None:
            what = (f"holds {other}, which its samples.jsonl does not name" if (self.output_dir / "samples.jsonl")
                    .is_file() else f"is no samples folder (no samples.jsonl) and holds {other}")
            raise ValueError(f"{self.output_dir} {what}: the synthetic images would be mixed with files no sampling "
                             "job wrote; write to another folder (--out DIR, --output_dir DIR)")
        sha = sha256_of(self.checkpoint) if self.checkpoint and self.checkpoint.is_file() else None
        guide = self.guide_file
        guide_sha = sha256_of(guide) if guide else None
        self.check_folder_matches(sha, guide_sha)
        if self.quality_gate:  # the earlier runs' counts are readable and of this gate: checked before any work
            with_earlier_counts({"generated": 0, "rejected": 0, "quality_gate": self.gate_path}, self.quality_file)
        done = self.done_seeds()
        if self.quality_gate:
            todo = gated_todo(pairs, done, self.seed, self.shard)
        else:
            check_numbering(plan_seeds(classes, self.class_names, self.per_class, self.seed), done, classes,
                            self.output_dir)
            todo = [p for p in pairs if p not in done]
        if done:
            logger.info("%d of %d images already in %s; making the other %d", len(pairs) - len(todo), len(pairs),
                        self.output_dir, len(todo))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.output_dir / "samples.jsonl"
        quality = {"generated": 0, "rejected": 0}
        with open(meta_path, "a") as meta:
            for labels, seeds, images, scores in self._batches(todo, quality):
                for i, (label, seed, image) in enumerate(zip(labels, seeds, images)):
                    record = self._write_image(label, seed, image, sha)
                    if guide:
                        record.update(guide=str(guide), guide_sha256=guide_sha)
                    if scores is not None:
                        record["realism_score"] = round(float(scores[i]), 5)
                        record["quality_gate"] = quality.get("quality_gate")
                    meta.write(json.dumps(record) + "\n")
                meta.flush()
                os.fsync(meta.fileno())
        if self.quality_gate:
            made, rejected = quality["generated"], quality["rejected"]
            quality = with_earlier_counts(quality, self.quality_file)
            quality["rejection_rate"] = quality["rejected"] / max(quality["generated"], 1)
            write_json_atomic(quality, self.quality_file)
            folder = (f"; with the earlier runs into this folder {quality['rejected']} of {quality['generated']} "
                      f"({quality['rejection_rate']:.1%})" if quality["generated"] != made else "")
            print(f"quality filter: {rejected} of {made} generated images rejected ({rejected / max(made, 1):.1%})"
                  f"{folder}; sampler {self.sampler}, {self.steps} steps")
        self.write_grids()
        logger.info("wrote %d images to %s", len(todo), self.output_dir)
        return meta_path

    def _batches(self, todo: list[tuple[int, int]], quality: dict):
        """``(labels, seeds, images, scores)`` per batch; through the quality gate when one is set."""
        labels, seeds = [p[0] for p in todo], [p[1] for p in todo]
        if not self.quality_gate:
            for batch_labels, batch_seeds, images in self.pipeline.iter_generate(
                labels, seeds, self.steps, self.guidance_scale, self.sampler
            ):
                yield batch_labels, batch_seeds, images, None
            return
        from medgen.metrics.commands import load_gate, quality_filtered_generate

        gate, extractor, info = load_gate(self.quality_gate, self.domain_weights)
        quality.update(info)
        quality.update(sampler=self.sampler, steps=self.steps, guidance_scale=self.guidance_scale)
        size = self.pipeline.batch_size if isinstance(self.pipeline.batch_size, int) else 16
        step = self.shard[1]  # a shard's seeds: its own residue, so shards never make the same seed
        next_seed = min(seeds, default=self.seed)
        for start in range(0, len(labels), size):
            result = quality_filtered_generate(
                self.pipeline, labels[start:start + size], self.quality_gate, num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale, first_seed=next_seed, sampler=self.sampler,
                gate_and_extractor=(gate, extractor), seed_step=step,
            )
            next_seed = max(max(result["seeds"]), next_seed + (result["generated"] - 1) * step) + step
            quality["generated"] += result["generated"]
            quality["rejected"] += round(result["rejection_rate"] * result["generated"])
            yield result["labels"], result["seeds"], result["images"].cpu(), result["scores"]

    def _write_image(self, label: int, seed: int, image: torch.Tensor, sha: str | None) -> dict:
        classes = self.pipeline.classes
        rel = Path(classes[label]) / f"{seed:06d}.png"
        save_png(image, self.output_dir / rel)
        if self.save_npy:
            # float copy in [0, 1] (the loaders' range), lossless for DICOM/NIfTI export
            unit = ((image.numpy() + 1.0) / 2.0).astype(np.float32)
            with atomic_write(self.output_dir / rel.with_suffix(".npy")) as f:
                np.save(f, unit)
        return {
            "file": rel.as_posix(), "class": classes[label], "label": label, "seed": seed,
            "sampler": self.sampler, "steps": self.steps, "guidance_scale": self.guidance_scale,
            **({"guidance_interval": self.guidance_interval} if self.guidance_interval else {}),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "checkpoint_sha256": sha,
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def write_grids(self) -> list[Path]:
        """``grid_<class>.png`` with up to ``grid_size`` images of each class in the folder."""
        records = sample_records(self.output_dir)
        paths = []
        for name in sorted({r["class"] for r in records}):
            files = [self.output_dir / r["file"] for r in records if r["class"] == name][: self.grid_size]
            images = [torch.from_numpy(_read_png(f)) for f in files if f.is_file()]
            if images:
                grid = Image.fromarray(make_grid(images))
                paths.append(atomic_save(grid, self.output_dir / f"grid_{name}.png", format="PNG"))
        return paths


def _brief(value: Any) -> str:
    """A recorded value for a one-line message (hashes shortened)."""
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else str(value)


def _read_png(path: Path) -> np.ndarray:
    """A written sample as ``(C, H, W)`` in [-1, 1]: RGB stays 3 channels (a colour grid), grey 1."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA", "P"):
            return np.moveaxis(np.asarray(im.convert("RGB"), dtype=np.float32), -1, 0) / 127.5 - 1.0
        return np.asarray(im.convert("L"), dtype=np.float32)[None] / 127.5 - 1.0
