"""``medgen zoo-export``: a medgen bundle as the MONAI Model Zoo takes it, runnable with MONAI alone.

The exported folder has JSON configs (``train.json``, ``inference.json``, ``multi_gpu_train.json``) whose
``network_def`` is MONAI's own ``DiffusionModelUNet`` (so ``monai.bundle.load`` returns it without medgen), the
weights as that network's state dict in ``models/model.pt``, and the few medgen modules it needs (class-label glue,
fast samplers, Langevin sampling, the score wrapper) copied into ``scripts/`` with their imports rewritten.

``bundle_root`` is the folder of the config file the workflow was started with, so the commands in its README
work from any folder. There is no ``large_files.yml``: every file ships in the folder (the zoo's 25 MB limit).

A latent bundle is laid out as the zoo's own latent bundles (brats_mri_axial_slices_generative_diffusion):
``autoencoder_def`` is MONAI's ``AutoencoderKL`` with its state dict in ``models/model_autoencoder.pt``, inference
decodes the sampled latents, and ``train_diffusion.json`` / ``multi_gpu_train_diffusion.json`` train the diffusion
network on the frozen autoencoder. The autoencoder stage itself (its perceptual loss uses medgen's domain
classifier) trains with medgen's ``train_autoencoder.yaml``; the exported card says so.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from medgen.diffusion.guide import default_guide
from medgen.networks.weights_meta import read_meta

MEDGEN = Path(__file__).resolve().parent
# medgen module -> file in the exported scripts/ (every medgen import among them must be in this table)
VENDORED = {
    "medgen.diffusion.precision": "precision.py",
    "medgen.diffusion.objectives": "objectives.py",
    "medgen.diffusion.solvers": "solvers.py",
    "medgen.diffusion.pipeline": "pipeline.py",
    "medgen.diffusion.inferer": "inferer.py",
    "medgen.diffusion.prepare_batch": "prepare_batch.py",
    "medgen.diffusion.ncsn": "ncsn.py",
    "medgen.diffusion.langevin": "langevin.py",
    "medgen.diffusion.score_training": "score_training.py",
    "medgen.data.balance": "balance.py",
    "medgen.networks.unet": "unet.py",
    "medgen.networks.score": "score.py",
    "medgen.latent.checks": "latent_checks.py",
    "medgen.latent.pipeline": "latent_pipeline.py",
    "medgen.zoo_scripts.data": "data.py",
    "medgen.zoo_scripts.sampling": "sampling.py",
    "medgen.zoo_scripts.latent": "latent.py",
}
# what the exported configs and scripts import besides monai, torch and numpy (metadata's required_packages_version)
REQUIRED_PACKAGES = ("pytorch-ignite", "pillow", "tqdm", "tensorboard")
# stack look-up of the running workflow's config folder; the current folder when there is none (the zoo's ".")
BUNDLE_ROOT = ("$next((os.path.dirname(os.path.abspath(str(f.frame.f_locals['self'].config_root_path))) "
               "for f in inspect.stack() if isinstance(f.frame.f_locals.get('self'), monai.bundle.ConfigWorkflow)), "
               "os.path.abspath('.'))")
# no "initialize" in the exported configs: MONAI resolves every import at the first expression it evaluates, and
# `scripts` is importable only once ConfigWorkflow.run() has put the bundle folder on sys.path
IMPORTS = ["$import os", "$import inspect", "$import torch", "$import monai", "$import scripts"]


class ZooExportError(ValueError):
    """A bundle that cannot be exported (no weights, unknown network); the message names the file."""


def vendored_source(module: str) -> str:
    """The module's source with ``medgen.*`` imports pointing at ``scripts.*``; refuses any other medgen import."""
    path = MEDGEN.joinpath(*module.split(".")[1:]).with_suffix(".py")
    text = path.read_text()
    text = re.sub(r"from medgen\.diffusion import (\w+)", r"from scripts import \1", text)
    for name, file in VENDORED.items():
        text = re.sub(rf"\b{re.escape(name)}\b", f"scripts.{file[:-3]}", text)
    left = re.findall(r"^\s*(?:from|import) (medgen[\w.]*)", text, re.M)
    if left:
        raise ZooExportError(f"{path}: imports {sorted(set(left))}, which the exported scripts/ do not have")
    origin = path.relative_to(MEDGEN.parent).as_posix()
    return f"# Copied from medgen {_version('medgen')} ({origin}) by `medgen zoo-export`; Apache-2.0.\n" + text


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0"


def kind_of(meta: dict[str, Any]) -> str:
    """``ddpm`` (noise-prediction UNet) or ``score`` (NCSN score network), from the weights' metadata."""
    target = str(meta.get("network", {}).get("_target_", ""))
    if target.endswith("ScoreNetwork"):
        return "score"
    if target.endswith("ConditionalDiffusionUNet"):
        return "ddpm"
    raise ZooExportError(f"model.json: network {target!r} is neither a ConditionalDiffusionUNet nor a ScoreNetwork")


def is_latent(meta: dict[str, Any]) -> bool:
    """Whether the weights are a latent diffusion network (their metadata names the autoencoder)."""
    return meta.get("config", {}).get("route") == "latent"


def unet_state_dict(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The weights as a plain state dict (a score network's ``unet.`` prefix removed)."""
    from medgen.diffusion.sample_run import _state_dict_of, check_weights_file

    state = _state_dict_of(torch.load(check_weights_file(path), map_location="cpu", weights_only=True), path, None)
    if kind == "score":
        state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    return {k: v.detach().clone() for k, v in state.items()}


def network_def(meta: dict[str, Any]) -> dict[str, Any]:
    net = meta["network"]
    channels = "@latent_channels" if is_latent(meta) else "@channels"
    return {"_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": net.get("spatial_dims", 2),
            "in_channels": channels, "out_channels": channels, "channels": list(net["channels"]),
            "attention_levels": list(net["attention_levels"]), "num_res_blocks": net["num_res_blocks"],
            "num_head_channels": net.get("num_head_channels", 32), "norm_num_groups": net["norm_num_groups"],
            "num_class_embeds": "$len(@classes) + 1"}


def score_network_def(meta: dict[str, Any]) -> dict[str, Any]:
    """The score network around ``@network`` (the UNet), with the input scaling and skip of the weights."""
    config = meta.get("config", {})
    return {"_target_": "scripts.score.ScoreNetwork", "unet": "@network", "sigma_data": config.get("sigma_data", 0.5),
            "skip": config.get("skip_connection", True),
            "noise_embedding_scale": meta["network"].get("noise_embedding_scale", 1.0)}


def scheduler_def(meta: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "score":
        return {"_target_": "scripts.ncsn.NCSNScheduler", "num_train_timesteps": meta["config"]["num_levels"],
                "sigma_max": meta["config"]["sigma_max"], "sigma_min": meta["config"]["sigma_min"]}
    sched = meta["scheduler"]
    betas = sched.get("betas", [0.0001, None, 0.02])
    steps = sched.get("num_train_timesteps", 1000)
    return {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": steps,
            "schedule": beta_schedule(betas, steps), "beta_start": betas[0], "beta_end": betas[-1],
            "prediction_type": meta.get("prediction_type", "epsilon")}


def beta_schedule(betas: list[float | None], steps: int) -> str:
    """MONAI's name of the beta schedule whose first, middle and last betas the weights' metadata records."""
    from monai.networks.schedulers import DDPMScheduler

    if betas[1] is None:
        return "linear_beta"
    for name in ("linear_beta", "scaled_linear_beta"):
        made = DDPMScheduler(steps, schedule=name, beta_start=betas[0], beta_end=betas[-1]).betas
        if abs(float(made[steps // 2]) - betas[1]) <= 1e-5 * abs(betas[1]):  # recorded to 6 figures
            return name
    raise ZooExportError(f"model.json: betas {betas} are neither MONAI's linear_beta nor its scaled_linear_beta "
                         "schedule; the exported scheduler could not reproduce them")


def autoencoder_keys(meta: dict[str, Any], autoencoder: dict[str, Any]) -> dict[str, Any]:
    """A latent bundle's frozen autoencoder (MONAI ``AutoencoderKL`` from its weights' metadata) and latent sizes."""
    args = {k: v for k, v in autoencoder["network"].items() if k != "_target_"}
    return {
        "latent_channels": int(autoencoder["latent_channels"]),
        "scale_factor": float(meta["config"]["scale_factor"]),
        "autoencoder_path": "$@bundle_root + '/models/model_autoencoder.pt'",
        "autoencoder_def": {"_target_": "monai.networks.nets.AutoencoderKL", **args},
        "autoencoder": "$@autoencoder_def.to(@device)",
        "load_autoencoder": "$@autoencoder.load_state_dict(torch.load(@autoencoder_path, map_location=@device, "
                            "weights_only=True))",
    }


def common_keys(meta: dict[str, Any], kind: str, autoencoder: dict[str, Any] | None = None) -> dict[str, Any]:
    config = meta.get("config", {})
    keys: dict[str, Any] = {
        "imports": IMPORTS,
        "bundle_root": BUNDLE_ROOT,
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "classes": list(meta["classes"]),
        "image_size": int(meta["image_size"]),
        "channels": int(meta.get("channels", 1)),
        "network_def": network_def(meta),
        "scheduler": scheduler_def(meta, kind),
    }
    if kind == "score":
        keys["score_network"] = score_network_def(meta)
    else:
        keys["preconditioning"] = config.get("preconditioning", "none")
        keys["edm_sigma_data"] = config.get("edm_sigma_data", 0.5)
    if autoencoder is not None:
        keys.update(autoencoder_keys(meta, autoencoder))
    return keys


SAMPLING_KEYS = ("sampler", "num_inference_steps", "guidance_scale", "guidance_interval")


def literal_values(src: Path, file: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The literal (not ``$``-expression) values of ``keys`` in the medgen bundle's config ``file``: the sampler,
    steps and guidance of ``inference.yaml`` (so the export makes the images its model card's figures were measured
    on), the noise-level sampling and loss weighting of the training config."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(src / "configs" / file))
    values = {key: parser[key] for key in keys if key in parser}
    return {key: value for key, value in values.items() if not (isinstance(value, str) and value.startswith("$"))}


def inference_config(meta: dict[str, Any], kind: str, sampling: dict[str, Any] | None = None,
                     autoencoder: dict[str, Any] | None = None, guide: dict[str, Any] | None = None) -> dict[str, Any]:
    """The zoo bundle's inference.json; ``sampling`` (:func:`literal_values` of ``inference.yaml``) overrides the
    sampler defaults; ``autoencoder`` (its weights' metadata) makes it sample latents and decode them; ``guide`` (the
    metadata of the bundle's autoguidance guide, :func:`medgen.diffusion.guide.default_guide`) makes it guide with
    that network (``models/model_guide.pt``) instead of classifier-free guidance."""
    config = common_keys(meta, kind, autoencoder)
    config.update({
        "output_dir": "$@bundle_root + '/samples'",
        "per_class": 8,
        "seed": 0,
        "class_names": None,
        "guidance_scale": 1.0,
        "guidance_interval": None,
        "batch_size": 16,
        "precision": "auto",
        "network": "$@network_def.to(@device)",
        "load_weights": "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, weights_only=True))",
        "inferer": {"_target_": "monai.inferers.DiffusionInferer", "scheduler": "@scheduler"},
    })
    if kind == "score":
        config.update({
            "sampler": "pc", "num_inference_steps": 200, "n_steps_each": 1, "snr": 0.16,
            "pipeline": {"_target_": "scripts.langevin.LangevinPipeline", "network": "@score_network",
                         "scheduler": "@scheduler", "classes": "@classes", "image_size": "@image_size",
                         "in_channels": "@channels", "device": "@device", "precision": "@precision",
                         "batch_size": "@batch_size", "sampler": "@sampler", "n_steps_each": "@n_steps_each",
                         "snr": "@snr", "guidance_interval": "@guidance_interval"}})
    else:
        config.update({
            "sampler": "dpmpp2m", "num_inference_steps": 15,
            "pipeline": {"_target_": "scripts.pipeline.DiffusionPipeline",
                         "network": "$scripts.objectives.for_sampling(@network, @scheduler, @preconditioning, "
                                    "@edm_sigma_data)",
                         "scheduler": "@scheduler", "classes": "@classes", "image_size": "@image_size",
                         "in_channels": "@channels", "device": "@device", "precision": "@precision",
                         "batch_size": "@batch_size", "guidance_interval": "@guidance_interval"}})
    if autoencoder is not None:
        pipeline = config["pipeline"]
        pipeline["_target_"] = "scripts.latent_pipeline.LatentDiffusionPipeline"
        pipeline.update({"autoencoder": "@autoencoder", "scale_factor": "@scale_factor"})
    if guide is not None:
        guide_config = guide.get("config", {})
        config.update({
            "guide_path": "$@bundle_root + '/models/model_guide.pt'",
            "guide_def": network_def(guide),
            "guide": "$@guide_def.to(@device)",
            "load_guide": "$@guide.load_state_dict(torch.load(@guide_path, map_location=@device, weights_only=True))",
        })
        if kind == "score":  # the guide's UNet seen as a score network, with its own sigma_data / skip
            config["guide_score_network"] = {**score_network_def(guide), "unet": "@guide"}
            config["pipeline"]["guide_network"] = "@guide_score_network"
        else:
            config["pipeline"]["guide_network"] = (
                f"$scripts.objectives.for_sampling(@guide, @scheduler, "
                f"{guide_config.get('preconditioning', 'none')!r}, {float(guide_config.get('edm_sigma_data', 0.5))})")
    config.update({key: value for key, value in (sampling or {}).items() if key in SAMPLING_KEYS})
    config["run"] = [
        "$monai.utils.set_determinism(seed=@seed)",
        "$@load_weights",
        *(["$@load_guide"] if guide is not None else []),
        *(["$@load_autoencoder"] if autoencoder is not None else []),
        "$scripts.sampling.write_samples(@pipeline, @output_dir, @per_class, @seed, @sampler, "
        "@num_inference_steps, @guidance_scale, @class_names)",
    ]
    return config


# the medgen bundle's training keys the exported prepare_batch takes over (noise levels and loss weighting)
TRAINING_KEYS = ("timestep_sampling", "lognormal_mean", "lognormal_std", "loss_weighting", "min_snr_gamma")


def resize_steps(meta: dict[str, Any], image_keys: list[str]) -> list[dict[str, Any]]:
    """MONAI transforms bringing an image to ``image_size`` as the weights were trained (their ``resize_mode``)."""
    mode = meta.get("config", {}).get("resize_mode") or "crop"  # medgen's default (weights before it was recorded)
    size = ["@image_size", "@image_size"]
    if mode == "crop":  # the centre square of the shorter side, then resized (medgen.data.transforms.resize_steps)
        return [{"_target_": "Lambdad", "keys": image_keys,
                 "func": "$lambda x: monai.transforms.CenterSpatialCrop([min(x.shape[1:])] * 2)(x)"},
                {"_target_": "Resized", "keys": image_keys, "spatial_size": size, "mode": "bilinear",
                 "anti_aliasing": True}]
    if mode == "stretch":
        return [{"_target_": "Resized", "keys": image_keys, "spatial_size": size, "mode": "bilinear",
                 "anti_aliasing": True}]
    return [{"_target_": "Resized", "keys": image_keys, "spatial_size": "@image_size", "size_mode": "longest",
             "mode": "bilinear", "anti_aliasing": True},
            {"_target_": "SpatialPadd", "keys": image_keys, "spatial_size": size, "method": "symmetric",
             "mode": "constant"}]


def train_config(meta: dict[str, Any], kind: str, dataset_name: str, class_map: dict | None,
                 autoencoder: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The zoo bundle's training config: train.json, or train_diffusion.json on the frozen ``autoencoder``;
    ``training`` (:func:`literal_values` of the training config) carries the medgen bundle's noise-level sampling,
    loss weighting and, where the bundle has the key, ``class_balanced`` drawing."""
    config = common_keys(meta, kind, autoencoder)
    image_keys = ["image"]
    config.update({
        "dataset_dir": f"/workspace/data/{dataset_name}",
        "class_map": class_map,
        "output_dir": "$@bundle_root + '/runs'",
        "tensorboard_dir": "$@output_dir + '/tensorboard'",
        "learning_rate": 0.0002,
        "batch_size": 16,
        "max_epochs": 100,
        "label_dropout": 0.1,
        "num_workers": 2,
        "seed": 0,
        "network": "$@network_def.to(@device)",
        "max_items_per_class": None,
        "datalist": "$scripts.data.folder_datalist(@dataset_dir, @classes, @class_map, @max_items_per_class)",
        "optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()", "lr": "@learning_rate",
                      "weight_decay": 0.0},
    })
    preprocessing = {"_target_": "Compose", "transforms": [
        # rows first, as medgen reads images (MONAI's PILReader transposes 2D files by default)
        {"_target_": "LoadImaged", "keys": image_keys, "image_only": True, "reader": "PILReader",
         "reverse_indexing": False},
        {"_target_": "EnsureChannelFirstd", "keys": image_keys},
        {"_target_": "Lambdad", "keys": image_keys, "func": "$lambda x: scripts.data.to_channels(x, @channels)"},
        *resize_steps(meta, image_keys),
        {"_target_": "ScaleIntensityRanged", "keys": image_keys, "a_min": 0.0, "a_max": 255.0, "b_min": -1.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": image_keys + ["label"], "track_meta": False},
    ]}
    train: dict[str, Any] = {
        "preprocessing": preprocessing,
        "dataset": {"_target_": "CacheDataset", "data": "@datalist", "transform": "@train#preprocessing",
                    "cache_rate": 1.0, "num_workers": "@num_workers"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                       "shuffle": True, "drop_last": True, "num_workers": 0},
        "handlers": [
            {"_target_": "CheckpointSaver", "save_dir": "$@output_dir + '/checkpoints'",
             "save_dict": {"model": "@network_def", "optimizer": "@optimizer"}, "save_interval": 5,
             "save_final": True, "epoch_level": True, "n_saved": 2},
            {"_target_": "StatsHandler", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@tensorboard_dir", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
        ],
    }
    if kind == "score":
        train.update({
            "inferer": {"_target_": "scripts.score_training.ScoreMatchingInferer", "scheduler": "@scheduler"},
            "prepare_batch": {"_target_": "scripts.score_training.DSMPrepareBatch", "scheduler": "@scheduler",
                              "null_class": "$len(@classes)", "label_dropout": "@label_dropout"},
            "loss": {"_target_": "scripts.score_training.DenoisingScoreMatchingLoss"},
        })
        trained = "@score_network"
    else:
        train.update({
            "inferer": {"_target_": "scripts.inferer.ConditionalDiffusionInferer", "scheduler": "@scheduler"},
            "prepare_batch": {"_target_": "scripts.prepare_batch.ConditionalDiffusionPrepareBatch",
                              "num_train_timesteps": "$@scheduler.num_train_timesteps", "scheduler": "@scheduler",
                              "null_class": "$len(@classes)", "label_dropout": "@label_dropout",
                              "preconditioning": "@preconditioning", "sigma_data": "@edm_sigma_data",
                              **{key: value for key, value in (training or {}).items() if key in TRAINING_KEYS}},
            "loss": "$torch.nn.MSELoss()",
        })
        if autoencoder is not None:
            train["prepare_batch"].update({"_target_": "scripts.latent.LatentPrepareBatch",
                                           "autoencoder": "@autoencoder", "scale_factor": "@scale_factor"})
        trained = "@network"
    train["trainer"] = {"_target_": "SupervisedTrainer", "device": "@device", "max_epochs": "@max_epochs",
                        "train_data_loader": "@train#dataloader", "network": trained, "optimizer": "@optimizer",
                        "loss_function": "@train#loss", "inferer": "@train#inferer",
                        "prepare_batch": "@train#prepare_batch", "train_handlers": "@train#handlers"}
    if "class_balanced" in (training or {}):
        config["class_balanced"] = training["class_balanced"]
        train["dataloader"].update({
            "sampler": "$scripts.balance.class_balanced_sampler(@train#dataset) if @class_balanced else None",
            "shuffle": "$not @class_balanced"})
    config["train"] = train
    config["run"] = ["$monai.utils.set_determinism(seed=@seed)",
                     *(["$@load_autoencoder"] if autoencoder is not None else []), "$@train#trainer.run()"]
    return config


def multi_gpu_config(kind: str, latent: bool = False, class_balanced: bool = False) -> dict[str, Any]:
    """Overrides of train.json (train_diffusion.json if ``latent``) for ``torchrun`` (as the zoo's bundles write
    them); with ``class_balanced`` (the training config has that key) MONAI's ``DistributedWeightedRandomSampler``
    when it is true."""
    load = ["$@load_autoencoder"] if latent else []
    sampler: Any = {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                    "shuffle": True}
    if class_balanced:
        sampler = ("$scripts.balance.class_balanced_sampler(@train#dataset, distributed=True) if @class_balanced "
                   "else monai.data.DistributedSampler(@train#dataset, even_divisible=True, shuffle=True)")
    return {
        "device": "$torch.device('cuda:' + os.environ['LOCAL_RANK'] if torch.cuda.is_available() else 'cpu')",
        "network": {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "$@network_def.to(@device)",
                    "device_ids": "$[@device] if @device.type == 'cuda' else None"},
        "train#sampler": sampler,
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": "$@train#handlers[: -2 if dist.get_rank() > 0 else None]",
        "imports": [*IMPORTS, "$import torch.distributed as dist"],
        "run": ["$dist.is_initialized() or dist.init_process_group(backend='nccl' if torch.cuda.is_available() "
                "else 'gloo')", "$monai.utils.set_determinism(seed=@seed)", *load, "$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def zoo_metadata(meta: dict[str, Any], source: dict[str, Any], kind: str) -> dict[str, Any]:
    """The bundle's metadata with exactly the packages the exported form needs, and its network's inputs."""
    out = json.loads(json.dumps(source))
    out["monai_version"] = _version("monai")
    out["pytorch_version"] = _version("torch").split("+")[0]
    out["numpy_version"] = _version("numpy")
    out["required_packages_version"] = {name: _version(name) for name in REQUIRED_PACKAGES}
    out.pop("optional_packages_version", None)
    fmt = out["network_data_format"]
    inputs = fmt["inputs"]
    size = ([int(v) for v in meta["config"]["latent_shape"][1:]] if is_latent(meta)  # the network sees latents
            else [int(meta["image_size"])] * 2)
    inputs["image"]["spatial_shape"] = size
    fmt["outputs"]["pred"]["spatial_shape"] = size
    if kind == "score":  # network_def is the UNet inside the score wrapper: timesteps = log(sigma)
        sigma = inputs.pop("sigma")
        inputs["timesteps"] = {**sigma, "format": "log_noise_level",
                               "value_range": [round(float(torch.tensor(v).log()), 4) for v in sigma["value_range"]]}
        inputs["class_labels"] = inputs.pop("class_labels")
        fmt["outputs"]["pred"]["channel_def"] = {"0": "score"}  # sigma times the score; its target is -noise
    return out


SAMPLER_NAMES = {"pc": "annealed Langevin / predictor-corrector", "als": "annealed Langevin dynamics",
                 "reverse": "reverse-diffusion predictor", "dpmpp2m": "DPM-Solver++ 2M", "ddim": "DDIM", "ddpm": "DDPM"}


def output_line(meta: dict[str, Any], kind: str) -> str:
    """What the network returns, in the README's words."""
    if kind == "score":
        return "sigma times the score of the noisy image."
    what = {"v_prediction": "Predicted velocity (v)", "sample": "Predicted clean input (x0)"}.get(
        meta.get("prediction_type") or "epsilon", "Predicted noise (epsilon)")
    if meta.get("config", {}).get("preconditioning") == "edm":
        what = ("EDM's preconditioned output F (Karras et al. 2022; input scaled by c_in): `scripts/objectives.py` "
                f"turns c_skip x + c_out F into the {what[0].lower() + what[1:]}")
    return what + "."


def zoo_readme(meta: dict[str, Any], source_meta: dict[str, Any], name: str, kind: str, card: str,
               sampling: dict[str, Any] | None = None, autoencoder: dict[str, Any] | None = None,
               guide: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> str:
    """A model card in the zoo's README layout; the medgen card's figures follow under Performance."""
    classes = ", ".join(meta["classes"])
    size = meta["image_size"]
    settings = inference_config(meta, kind, sampling, autoencoder, guide)
    train_file = "train_diffusion.json" if autoencoder is not None else "train.json"
    latent = "latent" if autoencoder is not None else "image"
    latent_shape = "x".join(map(str, meta.get("config", {}).get("latent_shape", [])))
    stages = "" if autoencoder is None else f"""
Two networks, as in the zoo's latent diffusion bundles: MONAI's `AutoencoderKL` (`autoencoder_def`,
`models/model_autoencoder.pt`) compresses each {size}x{size} image into a {latent_shape}
latent (scale factor {float(meta["config"]["scale_factor"]):.6g}), and the diffusion network (`network_def`,
`models/model.pt`) denoises latents; inference decodes the sampled latents into images. `configs/{train_file}`
trains the diffusion network on the frozen autoencoder (each batch encoded on the fly). The autoencoder itself
was trained with medgen (`train_autoencoder.yaml`: L1, KL, adversarial and a perceptual loss on medgen's domain
classifier); its training is not part of this export.
"""
    unit = "noise levels" if kind == "score" else "steps"
    balanced = (" `--class_balanced True` draws every class equally often (a rare class as often as a common one)."
                if "class_balanced" in (training or {}) else "")
    sampler = (f"{SAMPLER_NAMES.get(settings['sampler'], settings['sampler'])}, {settings['num_inference_steps']} "
               f"{unit}, guidance scale {settings['guidance_scale']}")
    if guide is not None:
        sampler += (" with autoguidance: guided by a smaller network trained for a fraction of the time "
                    "(`guide_def`, `models/model_guide.pt`) instead of the unconditional prediction")
    return f"""# Model Overview
{source_meta.get('description', '')}

Exported from medgen {_version('medgen')} by `medgen zoo-export {name}`; it runs with MONAI and the packages in
`configs/metadata.json` alone (the sampling and class-label code is in `scripts/`).

## Data
{source_meta.get('data_source', '')}

Classes: {classes}. Images are {size}x{size}, {meta.get('channels', 1)} channel(s), scaled to [-1, 1].
{stages}
## Training Configuration
`configs/{train_file}`: AdamW, learning rate 2e-4, batch 16, class-conditional with a null class (label dropout 0.1)
for classifier-free guidance.{balanced} Checkpoints go to `runs/checkpoints`, TensorBoard events to
`runs/tensorboard`.

### Input
{f"Noisy {latent} and log noise level (timesteps), class label." if kind == "score" else
 f"Noisy {latent}, timestep (0-999), class label."}

### Output
{output_line(meta, kind)}

## Performance
See the figures below (from medgen's model card) and `configs/metadata.json` `eval_metrics`.

## MONAI Bundle Commands
The commands work from any folder (`bundle_root` is the folder of the config file).

#### Execute training
```
python -m monai.bundle run --config_file configs/{train_file} --dataset_dir <folder with one sub-folder per class>
```

#### Override the `train` config to execute multi-GPU training
```
torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \\
    --config_file "['configs/{train_file}','configs/multi_gpu_{train_file}']"
```

#### Execute inference
```
python -m monai.bundle run --config_file configs/inference.json --per_class 8
```
writes `samples/<class>/<seed>.png` and `samples/samples.jsonl` ({sampler}). Every image is synthetic. A second run
adds its images to the folder (`--seed` for new ones); a folder holding other files, or images made with other
settings, stops with one line (`--output_dir DIR` writes elsewhere).

#### Load the network in Python
```
import monai
net = monai.bundle.load(name="{name}", bundle_dir="<folder holding {name}>", workflow_type="inference")
```

#### TorchScript
Not supported: TorchScript cannot script MONAI's `DiffusionModelUNet` attention, so there is no `models/model.ts`
(as for the zoo's generative bundles). ONNX export is available through medgen (`medgen export-model`).

# References
{chr(10).join('- ' + r for r in source_meta.get('references', []))}

# medgen model card
{card}

# License
The code is released under the Apache License, Version 2.0 (`LICENSE`); the training data's licence is in
`docs/data_license.txt`.
"""


def latent_autoencoder(weights: Path, meta: dict[str, Any], kind: str) -> tuple[dict[str, Any], dict]:
    """The metadata and plain ``AutoencoderKL`` state dict of the autoencoder beside latent diffusion ``weights``,
    checked against the SHA-256 the diffusion weights record (:func:`medgen.latent.check_autoencoder_file`)."""
    from medgen.autoencoder.weights import load_autoencoder
    from medgen.latent import LatentConfigError, check_autoencoder_file

    if kind != "ddpm":
        raise ZooExportError(f"{weights}: a latent score network; the zoo form exports latent DDPM bundles only")
    config = meta["config"]
    path = weights.parent / config.get("autoencoder_file", "model_autoencoder.pt")
    if not path.is_file():
        raise ZooExportError(f"{path}: no autoencoder beside the latent diffusion weights {weights.name}")
    try:
        check_autoencoder_file(path, meta, weights, key="autoencoder_file")  # or it with a fine-tuned decoder
    except LatentConfigError as err:
        raise ZooExportError(str(err)) from None
    _, autoencoder = load_autoencoder(path)  # checked: it loads strictly into the AutoencoderKL it records
    return autoencoder, unet_state_dict(path, "ddpm")  # the state dict as stored (fp16)


def dataset_folder_name(src: Path, train_file: str = "train.yaml") -> str:
    """The data set's folder name from the medgen training config's ``dataset_dir`` (the bundle name if none)."""
    path = src / "configs" / train_file
    text = path.read_text() if path.is_file() else ""
    match = re.search(r"^dataset_dir:.*'([\w.-]+)'\)", text, re.M)
    return match.group(1) if match else src.name


def export_bundle(bundle: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the zoo form of ``bundle`` as ``<out>/<bundle name>``; returns that folder."""
    from medgen.bundles import find_bundle

    src = Path(find_bundle(str(bundle)))
    name = src.name
    weights = src / "models" / "model.pt"
    if not weights.is_file():
        raise ZooExportError(f"{weights}: no weights to export; train the bundle first (medgen train {name} "
                             "--export-to-bundle)")
    meta = read_meta(weights)
    if not meta:
        raise ZooExportError(f"{weights}: no model.json beside it; the export needs the weights' metadata")
    kind = kind_of(meta)
    autoencoder, autoencoder_state = (latent_autoencoder(weights, meta, kind) if is_latent(meta)
                                      else (None, None))
    guide_file = default_guide(src, weights)
    guide = read_meta(guide_file) if guide_file else None
    source_meta = json.loads((src / "configs" / "metadata.json").read_text())
    target = Path(out) / name
    if target.exists() and not force:
        raise ZooExportError(f"{target} exists; pass --force to replace it")
    Path(out).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; the bundle gets a folder's usual permissions
    try:
        for folder in ("configs", "models", "scripts", "docs"):
            (work / folder).mkdir()
        shutil.copy2(src / "LICENSE", work / "LICENSE")
        shutil.copy2(src / "configs" / "logging.conf", work / "configs" / "logging.conf")
        for doc in (src / "docs").glob("*"):
            if doc.is_file() and doc.name != "README.md":
                shutil.copy2(doc, work / "docs" / doc.name)
        modules = ", ".join(sorted(file[:-3] for file in VENDORED.values()))
        (work / "scripts" / "__init__.py").write_text(
            f'"""Code of medgen {_version("medgen")} this bundle runs on (see docs/README.md)."""\n\n'
            f"from . import {modules}  # noqa: F401\n")
        for module, file in VENDORED.items():
            (work / "scripts" / file).write_text(vendored_source(module))
        torch.save(unet_state_dict(weights, kind), work / "models" / "model.pt")
        if autoencoder_state is not None:
            torch.save(autoencoder_state, work / "models" / "model_autoencoder.pt")
        if guide_file:
            torch.save(unet_state_dict(Path(guide_file), kind), work / "models" / "model_guide.pt")
        class_map = meta.get("class_map") or meta.get("config", {}).get("class_map")
        train_file = "train_diffusion" if autoencoder is not None else "train"
        dataset_name = dataset_folder_name(src, f"{train_file}.yaml")
        sampling = literal_values(src, "inference.yaml", SAMPLING_KEYS)
        training = literal_values(src, f"{train_file}.yaml", (*TRAINING_KEYS, "class_balanced"))
        configs = {"inference.json": inference_config(meta, kind, sampling, autoencoder, guide),
                   f"{train_file}.json": train_config(meta, kind, dataset_name, class_map, autoencoder, training),
                   f"multi_gpu_{train_file}.json": multi_gpu_config(kind, autoencoder is not None,
                                                                    "class_balanced" in training),
                   "metadata.json": zoo_metadata(meta, source_meta, kind)}
        for file, content in configs.items():
            (work / "configs" / file).write_text(json.dumps(content, indent=4) + "\n")
        card = (src / "docs" / "README.md").read_text() if (src / "docs" / "README.md").is_file() else ""
        (work / "docs" / "README.md").write_text(zoo_readme(meta, source_meta, name, kind, card, sampling,
                                                            autoencoder, guide, training))
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        (work / "docs" / "export.json").write_text(json.dumps(
            {"bundle": name, "version": source_meta.get("version"), "exported": stamp,
             "medgen_version": _version("medgen"), "weights_sha256": meta.get("weights_sha256")}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


def zoo_export_command(bundle: str, out: str, force: bool = False) -> int:
    """CLI: export and print where; 2 with one line for a bundle that cannot be exported."""
    try:
        target = export_bundle(bundle, out, force)
    except (ZooExportError, FileNotFoundError) as e:
        print(f"medgen zoo-export: {e}")
        return 2
    print(f"wrote {target} (check it with: medgen verify {target} --zoo-exclusions generative)")
    return 0
