"""The autoencoder stage on real images: a VAE-GAN engine wired as a bundle config wires it, trained for a few
iterations with tiny networks; its weights describe themselves, load for the latent stage, resume only on their own
data, and its reconstructions are measured."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.networks.nets import PatchDiscriminator
from PIL import Image
from torch.utils.data import DataLoader

from medgen.autoencoder import (
    AutoencoderWeightsMeta,
    DiscriminatorLoss,
    DomainPerceptualLoss,
    GeneratorLoss,
    VaeGanTrainer,
    build_autoencoder,
    init_autoencoder,
    load_autoencoder,
    reconstruction_report,
    same_latents,
)
from medgen.autoencoder.networks import encoder_sha256, is_encoder_tensor
from medgen.data.transforms import diffusion_transforms
from medgen.metrics.image_sets import datalist_from_class_folders, load_datalist_split
from medgen.networks.weights_meta import WeightsFileError, sha256_of

torch.set_num_threads(1)
SIZE = 32
TINY = {"channels": (8, 16), "latent_channels": 2, "num_res_blocks": 1, "norm_num_groups": 4}

# what a bundle's configs/train_autoencoder.yaml holds (docs/autoencoder.md shows the same), at test scale
CONFIG = """
imports:
  - $import torch
  - $import ignite
  - $import monai
  - $import medgen
  - $import medgen.autoencoder
  - $import medgen.engine
  - $import medgen.engine.runs
  - $import medgen.data.transforms
  - $import medgen.data.dataset
  - $import medgen.metrics.domain_model
output_dir: null
datalist_source: null
ckpt_dir: "$@output_dir + '/checkpoints'"
model_path: "$@output_dir + '/model_autoencoder.pt'"
device: "$torch.device('cpu')"
classes: [NORMAL, PNEUMONIA]
image_size: 32
channels: 1
resize_mode: crop
window: null
window_preset: null
autoencoder_channels: [8, 16]
latent_channels: 2
num_res_blocks: 1
norm_num_groups: 4
disc_channels: 8
disc_layers: 2
kl_weight: 1.0e-6
perceptual_weight: 0.0
perceptual_weights: null
adv_weight: 0.01
adv_warmup_iters: 2
learning_rate: 0.001
batch_size: 4
max_epochs: 2
ema_decay: 0.9
checkpoint_interval: 1
grid_interval: 1
resume: true
time_limit: null
init_weights: null
train_encoder: true

datalist: "$medgen.engine.runs.keep_datalist(@datalist_source, @output_dir, @ckpt_dir, @resume)"
autoencoder_def:
  _target_: medgen.autoencoder.build_autoencoder
  in_channels: "@channels"
  channels: "@autoencoder_channels"
  latent_channels: "@latent_channels"
  num_res_blocks: "@num_res_blocks"
  norm_num_groups: "@norm_num_groups"
  image_size: "@image_size"
gnetwork: "$medgen.autoencoder.init_autoencoder(@autoencoder_def, @init_weights, @train_encoder).to(@device)"
discriminator_def:
  _target_: monai.networks.nets.PatchDiscriminator
  spatial_dims: 2
  in_channels: "@channels"
  channels: "@disc_channels"
  num_layers_d: "@disc_layers"
  norm: INSTANCE
dnetwork: "$@discriminator_def.to(@device)"
weights_meta:
  _target_: medgen.autoencoder.AutoencoderWeightsMeta
  bundle: cxr_ldm
  classes: "@classes"
  image_size: "@image_size"
  channels: "@channels"
  network: "@gnetwork"
  datalist: "@datalist"
  config:
    resize_mode: "@resize_mode"
    window: "@window"
    window_preset: "@window_preset"
perceptual_loss:
  _target_: medgen.autoencoder.DomainPerceptualLoss
  _disabled_: "$not @perceptual_weight"
  weights: "@perceptual_weights"
g_loss:
  _target_: medgen.autoencoder.GeneratorLoss
  kl_weight: "@kl_weight"
  perceptual_weight: "@perceptual_weight"
  perceptual_loss: "@perceptual_loss"
  adv_weight: "@adv_weight"
d_loss:
  _target_: medgen.autoencoder.DiscriminatorLoss
  adv_weight: "@adv_weight"
g_optimizer:
  _target_: torch.optim.Adam
  params: "$medgen.autoencoder.trainable_parameters(@gnetwork)"
  lr: "@learning_rate"
d_optimizer:
  _target_: torch.optim.Adam
  params: "$@dnetwork.parameters()"
  lr: "@learning_rate"
ema:
  _target_: ignite.handlers.EMAHandler
  model: "@gnetwork"
  momentum: "$1.0 - @ema_decay"
train:
  preprocessing:
    _target_: medgen.data.transforms.diffusion_transforms
    image_size: "@image_size"
    channels: "@channels"
    resize_mode: "@resize_mode"
    window: "@window"
    preset: "@window_preset"
  dataset:
    _target_: medgen.data.dataset.SkipFailedCacheDataset
    data: "$@datalist['training']"
    transform: "@train#preprocessing"
    cache_rate: 1.0
    num_workers: 0
  dataloader:
    _target_: DataLoader
    dataset: "@train#dataset"
    batch_size: "@batch_size"
    shuffle: true
    drop_last: true
  handlers:
    - _target_: medgen.engine.ResumeFromLatest
      ckpt_dir: "@ckpt_dir"
      enabled: "@resume"
      meta: "@weights_meta"
      run_dir: "@output_dir"
      load_dict:
        model: "@gnetwork"
        discriminator: "@dnetwork"
        optimizer: "@g_optimizer"
        d_optimizer: "@d_optimizer"
        ema: "$@ema.ema_model"
    - "@ema"
    - _target_: medgen.engine.TimeLimit
      limit_sec: "@time_limit"
    - _target_: medgen.engine.LossHistory
      path: "$@output_dir + '/loss.jsonl'"
    - _target_: medgen.engine.CheckpointSaver
      save_dir: "@ckpt_dir"
      save_dict:
        model: "@gnetwork"
        discriminator: "@dnetwork"
        optimizer: "@g_optimizer"
        d_optimizer: "@d_optimizer"
        ema: "$@ema.ema_model"
        medgen_meta: "@weights_meta"
      save_interval: "@checkpoint_interval"
      save_final: true
      final_filename: checkpoint_final.pt
      epoch_level: true
      n_saved: 2
    - _target_: medgen.engine.ModelExporter
      network: "$@ema.ema_model"
      path: "@model_path"
      interval: "@checkpoint_interval"
      meta: "@weights_meta"
      half: true
    - _target_: medgen.autoencoder.ReconstructionGridHandler
      network: "$@ema.ema_model"
      images: "@train#dataset"
      out_dir: "$@output_dir + '/reconstructions'"
      interval: "@grid_interval"
      num_images: 4
    - _target_: StatsHandler
      tag_name: train_loss
      output_transform: "$monai.handlers.from_engine(['loss'], first=True)"
    - _target_: medgen.engine.LossProgressBar
  trainer:
    _target_: medgen.autoencoder.VaeGanTrainer
    device: "@device"
    max_epochs: "@max_epochs"
    train_data_loader: "@train#dataloader"
    g_network: "@gnetwork"
    g_optimizer: "@g_optimizer"
    g_loss_function: "@g_loss"
    d_network: "@dnetwork"
    d_optimizer: "@d_optimizer"
    d_loss_function: "@d_loss"
    adv_warmup_iters: "@adv_warmup_iters"
    train_handlers: "@train#handlers"
training:
  - "$medgen.autoencoder.check_image_size(@image_size, @autoencoder_channels)"
  - "$monai.utils.set_determinism(seed=0)"
  - "$medgen.engine.runs.check_resume(@ckpt_dir, @weights_meta, @resume)"
  - "$@train#trainer.run()"
"""


def run_config(**overrides) -> ConfigParser:
    """Parse CONFIG with ``overrides`` and run its ``training`` steps in order, as ``monai.bundle run`` does."""
    parser = ConfigParser(yaml.safe_load(CONFIG))
    for key, value in overrides.items():
        parser[key] = value
    for i in range(len(parser["training"])):
        parser.get_parsed_content(f"training#{i}", lazy=True)
    return parser


@pytest.fixture(scope="module")
def cxr_datalist(kermany: Path) -> dict:
    """Real chest X-rays: 4 training and 3 test images per class (NORMAL, PNEUMONIA)."""
    return datalist_from_class_folders({"training": kermany / "train", "test": kermany / "test"}, per_class=4,
                                       seed=5)


@pytest.fixture(scope="module")
def trained_run(cxr_datalist: dict, tmp_path_factory) -> tuple[Path, ConfigParser]:
    """The config trained for 3 epochs of 4 iterations (the adversarial loss from iteration 3) into a run folder."""
    out = tmp_path_factory.mktemp("ae_run")
    parser = run_config(output_dir=str(out), datalist_source=cxr_datalist, batch_size=2, max_epochs=3,
                        learning_rate=0.002)
    return out, parser


def images_of(datalist: dict, split: str = "training", channels: int = 1) -> torch.Tensor:
    pipeline = diffusion_transforms(image_size=SIZE, channels=channels)
    return torch.stack([pipeline(dict(item))["image"] for item in datalist[split]])


def loader_of(images: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader([{"image": im, "label": 0} for im in images], batch_size=batch_size, shuffle=False)


def test_loss_falls_when_it_overfits_a_fixed_batch(cxr_datalist):
    torch.manual_seed(0)
    images = images_of(cxr_datalist)[:4]
    ae = build_autoencoder(1, image_size=SIZE, **TINY)
    losses: list[float] = []
    trainer = VaeGanTrainer("cpu", 25, loader_of(images, 4), ae, torch.optim.Adam(ae.parameters(), 3e-3),
                            GeneratorLoss(kl_weight=1e-6))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run()
    assert len(losses) == 25
    assert np.mean(losses[-3:]) < 0.6 * losses[0]


def test_adversarial_loss_starts_only_after_the_warm_up(cxr_datalist):
    torch.manual_seed(0)
    images = images_of(cxr_datalist)[:4]
    ae = build_autoencoder(1, image_size=SIZE, **TINY)
    disc = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=1, num_layers_d=2, norm="INSTANCE")
    start = copy.deepcopy(disc.state_dict())
    outputs: list[dict] = []
    trainer = VaeGanTrainer("cpu", 5, loader_of(images, 4), ae, torch.optim.Adam(ae.parameters(), 1e-3),
                            GeneratorLoss(adv_weight=0.1), disc, torch.optim.Adam(disc.parameters(), 1e-3),
                            DiscriminatorLoss(adv_weight=0.1), adv_warmup_iters=3)

    def record(engine):
        outputs.append(dict(engine.state.output))
        if engine.state.iteration == 3:  # the warm-up ends: the discriminator has not been trained
            assert all(torch.equal(v, start[k]) for k, v in disc.state_dict().items())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert [o["adversarial"] for o in outputs] == [False, False, False, True, True]
    assert [o["d_loss"] for o in outputs[:3]] == [0.0] * 3 and all(o["d_loss"] > 0 for o in outputs[3:])
    assert [o["adv_loss"] for o in outputs[:3]] == [0.0] * 3 and all(o["adv_loss"] > 0 for o in outputs[3:])
    assert not all(torch.equal(v, start[k]) for k, v in disc.state_dict().items())


def test_image_size_not_divisible_by_the_factor_fails_before_training(cxr_datalist, tmp_path):
    with pytest.raises(ValueError, match=r"image_size 36 is not divisible by .* factor 8 .*autoencoder_channels"):
        build_autoencoder(1, channels=(8, 16, 16, 16), image_size=36)
    with pytest.raises(SystemExit) as err:
        run_config(output_dir=str(tmp_path / "run"), datalist_source=cxr_datalist, image_size=36,
                   autoencoder_channels=[8, 16, 16, 16])
    assert "image_size 36" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


def test_a_run_writes_checkpoints_history_grids_and_self_describing_weights(trained_run, cxr_datalist):
    out, parser = trained_run
    ckpt = torch.load(out / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    assert {"model", "discriminator", "optimizer", "d_optimizer", "ema", "medgen_meta", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 12
    assert [json.loads(x)["epoch"] for x in (out / "loss.jsonl").read_text().splitlines()] == [1, 2, 3]
    grids = sorted(p.name for p in (out / "reconstructions").glob("*.png"))
    assert grids == ["grid_epoch_0001.png", "grid_epoch_0002.png", "grid_epoch_0003.png"]
    with Image.open(out / "reconstructions" / grids[-1]) as grid:  # originals above reconstructions: 2 rows
        assert grid.size[1] == 2 * (SIZE + 4)
    state = torch.load(out / "model_autoencoder.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    meta = json.loads((out / "model_autoencoder.json").read_text())
    assert meta["kind"] == "autoencoder" and meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert (meta["image_size"], meta["channels"], meta["latent_channels"]) == (32, 1, 2)
    assert (meta["downsampling_factor"], meta["latent_size"]) == (2, 16)
    assert meta["network"]["_target_"] == "monai.networks.nets.autoencoderkl.AutoencoderKL"
    assert meta["network"]["channels"] == [8, 16] and meta["network"]["num_res_blocks"] == 1
    assert meta["datalist_sha256"] == parser.get_parsed_content("weights_meta").meta["datalist_sha256"]
    assert meta["config"]["resize_mode"] == "crop"


def test_exported_weights_load_and_reconstruct_as_the_trained_network(trained_run, cxr_datalist):
    out, parser = trained_run
    network, meta = load_autoencoder(out / "model_autoencoder.pt",
                                     expect={"channels": 1, "latent_channels": 2, "image_size": [32, 32]})
    assert meta["latent_channels"] == 2 and not network.training
    trained = copy.deepcopy(parser.get_parsed_content("ema").ema_model).half().float().eval()  # as stored: fp16
    images = images_of(cxr_datalist, "test")
    with torch.no_grad():
        assert torch.allclose(network.reconstruct(images), trained.reconstruct(images), atol=1e-5)
        latent = network.encode_stage_2_inputs(images)
    assert latent.shape == (len(images), 2, 16, 16)
    from_checkpoint, _ = load_autoencoder(out / "checkpoints" / "checkpoint_final.pt", expect={"latent_channels": 2})
    ema = parser.get_parsed_content("ema").ema_model.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in from_checkpoint.state_dict().items())  # a checkpoint's EMA


def test_weights_that_do_not_fit_give_one_line_naming_the_file_and_keys(trained_run, tmp_path):
    out, _ = trained_run
    weights = out / "model_autoencoder.pt"
    with pytest.raises(WeightsFileError) as err:
        load_autoencoder(weights, expect={"latent_channels": 4, "image_size": 32, "channels": 3})
    text = str(err.value)
    assert "\n" not in text and str(weights) in text
    assert "latent_channels 2 (weights) vs 4 (expected)" in text and "channels 1 (weights) vs 3" in text
    assert "image_size" not in text  # 32 and [32, 32] are the same size

    broken = tmp_path / "model_autoencoder.pt"
    data = weights.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    shutil.copy(out / "model_autoencoder.json", tmp_path / "model_autoencoder.json")
    with pytest.raises(WeightsFileError, match="truncated or damaged") as err:
        load_autoencoder(broken)
    assert "\n" not in str(err.value) and str(broken) in str(err.value)

    broken.write_bytes(data)
    (tmp_path / "model_autoencoder.json").write_text('{"kind": "autoenc')
    with pytest.raises(WeightsFileError, match="model_autoencoder.json cannot be read") as err:
        load_autoencoder(broken)
    assert "\n" not in str(err.value)
    (tmp_path / "model_autoencoder.json").unlink()
    with pytest.raises(WeightsFileError, match="model_autoencoder.json missing"):
        load_autoencoder(broken)
    with pytest.raises(WeightsFileError, match="missing"):
        load_autoencoder(tmp_path / "nowhere.pt")


def test_resume_continues_a_run_and_refuses_a_checkpoint_of_other_data(trained_run, cxr_datalist, tmp_path):
    out, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    parser = run_config(output_dir=str(run), datalist_source=cxr_datalist, batch_size=2, max_epochs=4)
    assert parser.get_parsed_content("train#trainer").state.iteration == 16
    assert [json.loads(x)["epoch"] for x in (run / "loss.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    other = copy.deepcopy(cxr_datalist)
    other["training"] = other["training"][1:] + other["test"][:1]
    with pytest.raises(SystemExit, match="cannot resume: checkpoint .* trained on other data") as err:
        run_config(output_dir=str(run), datalist_source=other, batch_size=2, max_epochs=5)
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit, match=r"cannot resume: .*network\.latent_channels"):
        run_config(output_dir=str(run), datalist_source=cxr_datalist, batch_size=2, max_epochs=5, latent_channels=3)


def test_a_frozen_encoder_fine_tunes_only_the_decoder_and_records_whose_latents_it_keeps(trained_run, cxr_datalist,
                                                                                         tmp_path):
    out, _ = trained_run
    start = out / "model_autoencoder.pt"
    parser = run_config(output_dir=str(tmp_path / "ft"), datalist_source=cxr_datalist, batch_size=2, max_epochs=2,
                        learning_rate=0.01, init_weights=str(start), train_encoder=False)
    assert parser.get_parsed_content("train#trainer").state.iteration == 8
    before, _ = load_autoencoder(start)
    after, meta = load_autoencoder(tmp_path / "ft" / "model_autoencoder.pt")
    old, new = before.state_dict(), after.state_dict()
    encoder = [k for k in old if is_encoder_tensor(k)]
    assert encoder and all(torch.equal(old[k], new[k]) for k in encoder)
    assert any(not torch.equal(old[k], new[k]) for k in old if not is_encoder_tensor(k))  # the decoder learned
    images = images_of(cxr_datalist, "test")
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(before.encode(images), after.encode(images)))  # mu, sigma
    config = meta["config"]
    assert config["init_sha256"] == sha256_of(start) and config["encoder_frozen"] is True
    assert config["encoder_sha256"] == encoder_sha256(before)
    assert same_latents(meta, after, sha256_of(start))
    assert not same_latents(meta, after, "0" * 64)  # fine-tuned from other weights
    assert not same_latents(meta, build_autoencoder(1, **TINY), sha256_of(start))  # another encoder
    assert config["same_latents_as"] == [sha256_of(start)]

    # fine-tuned again from the fine-tuned weights: still the first file's latents, and the second's
    tuned = tmp_path / "ft" / "model_autoencoder.pt"
    run_config(output_dir=str(tmp_path / "ft2"), datalist_source=cxr_datalist, batch_size=2, max_epochs=1,
               learning_rate=0.01, init_weights=str(tuned), train_encoder=False)
    again, meta = load_autoencoder(tmp_path / "ft2" / "model_autoencoder.pt")
    assert meta["config"]["same_latents_as"] == [sha256_of(start), sha256_of(tuned)]
    assert same_latents(meta, again, sha256_of(start)) and same_latents(meta, again, sha256_of(tuned))

    # the encoder trained too (the default): other latents, nothing recorded that would pass the check
    run_config(output_dir=str(tmp_path / "all"), datalist_source=cxr_datalist, batch_size=2, max_epochs=1,
               learning_rate=0.01, init_weights=str(start))
    both, meta = load_autoencoder(tmp_path / "all" / "model_autoencoder.pt")
    assert meta["config"]["encoder_frozen"] is False and "encoder_sha256" not in meta["config"]
    assert not same_latents(meta, both, sha256_of(start))


def test_fine_tuning_the_shipped_cxr_ldm_decoder_again_keeps_the_latents_its_diffusion_weights_were_trained_on():
    """cxr_ldm's shipped autoencoder is a decoder fine-tuning recorded before same_latents_as existed (init_sha256
    only): a second fine-tuning from it must still name the file model.json was trained on, or sampling refuses it."""
    models = Path(__file__).resolve().parents[2] / "bundles" / "cxr_ldm" / "models"
    shipped = models / "model_autoencoder.pt"
    trained_on = json.loads((models / "model.json").read_text())["config"]["autoencoder_sha256"]
    network, meta = load_autoencoder(shipped)
    assert "same_latents_as" not in meta["config"] and meta["config"]["init_sha256"] == trained_on
    tuned = init_autoencoder(network, shipped, train_encoder=False)
    assert tuned.fine_tune["same_latents_as"] == [trained_on, sha256_of(shipped)]


def test_fine_tuning_needs_weights_of_the_same_architecture(trained_run, cxr_datalist, tmp_path):
    out, _ = trained_run
    with pytest.raises(ValueError, match="train_encoder false needs init_weights"):
        init_autoencoder(build_autoencoder(1, **TINY), None, train_encoder=False)
    with pytest.raises(WeightsFileError) as err:
        init_autoencoder(build_autoencoder(1, **{**TINY, "latent_channels": 4}), out / "model_autoencoder.pt")
    text = str(err.value)
    assert "\n" not in text and "model_autoencoder.pt" in text and "latent_channels 2 (init_weights) vs 4 (config)" \
        in text
    network = init_autoencoder(build_autoencoder(1, **TINY), out / "model_autoencoder.pt", train_encoder=False)
    meta = AutoencoderWeightsMeta(["NORMAL", "PNEUMONIA"], SIZE, 1, network).meta
    assert meta["config"]["encoder_frozen"] is True and meta["config"]["init_sha256"] == \
        sha256_of(out / "model_autoencoder.pt")
    assert {n for n, p in network.named_parameters() if not p.requires_grad} == \
        {n for n, _ in network.named_parameters() if is_encoder_tensor(n)}


def test_a_config_with_a_perceptual_loss_trains_its_domain_classifier_offline(cxr_datalist, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    weights = "$medgen.metrics.domain_model.ensure_domain_classifier(@datalist, epochs=1, channels=@channels)"
    parser = run_config(output_dir=str(tmp_path / "run"), datalist_source=cxr_datalist, max_epochs=1,
                        perceptual_weight=0.1, perceptual_weights=weights)
    assert list((tmp_path / "cache" / "domain").glob("classifier_*.pt"))
    assert parser.get_parsed_content("perceptual_loss").channels == 1
    assert parser.get_parsed_content("train#trainer").state.output["perceptual_loss"] > 0


def test_domain_perceptual_loss_is_zero_for_equal_images_and_trains_rgb(blood_cells, tmp_path):
    from medgen.metrics.classifier import save_classifier, train_classifier

    train = load_datalist_split(blood_cells, "training", size=SIZE, channels=3)
    classifier = train_classifier(train.images, train.labels, len(train.classes), epochs=1, batch_size=8,
                                  augment=False, max_steps=2)
    weights = save_classifier(classifier, tmp_path / "domain.pt", train.classes, SIZE)
    perceptual = DomainPerceptualLoss(weights)
    images = torch.from_numpy(train.images[:4]) * 2 - 1
    assert float(perceptual(images, images)) == 0.0
    assert float(perceptual(images, images.flip(-1))) > 0.0

    torch.manual_seed(0)
    ae = build_autoencoder(3, image_size=SIZE, **TINY)
    disc = PatchDiscriminator(spatial_dims=2, channels=8, in_channels=3, num_layers_d=2, norm="INSTANCE")
    trainer = VaeGanTrainer("cpu", 2, loader_of(images, 4), ae, torch.optim.Adam(ae.parameters(), 1e-3),
                            GeneratorLoss(perceptual_weight=0.5, perceptual_loss=perceptual), disc,
                            torch.optim.Adam(disc.parameters(), 1e-3), DiscriminatorLoss(), adv_warmup_iters=1)
    trainer.run()
    assert trainer.state.output["perceptual_loss"] > 0 and trainer.state.output["adversarial"]
    with pytest.raises(ValueError, match="perceptual_weight 0.5 needs a perceptual_loss"):
        GeneratorLoss(perceptual_weight=0.5)

    report = reconstruction_report(ae, train.subset(np.arange(6)), tmp_path / "rgb.json", features=None)
    assert report["channels"] == 3 and report["overall"]["psnr"] > 0
    with Image.open(report["grid"]) as grid:
        assert grid.mode == "RGB"


@pytest.fixture(scope="module")
def blood_cells(shared_data: Path) -> dict:
    """Real colour blood-cell images: 2 per class for 4 classes."""
    root = shared_data / "blood_cells_pbc"
    classes = ["basophil", "eosinophil", "lymphocyte", "platelet"]
    items = [{"image": str(p), "label": k} for k, name in enumerate(classes)
             for p in sorted((root / name).glob("*.jpg"))[:2]]
    return {"classes": classes, "training": items}


def test_reconstruction_report_measures_held_out_images(trained_run, cxr_datalist, tmp_path, fid_weights):
    out, _ = trained_run
    trained, meta = load_autoencoder(out / "model_autoencoder.pt")
    torch.manual_seed(0)
    untrained = build_autoencoder(1, image_size=SIZE, **TINY)
    from medgen.metrics.features import InceptionFeatures

    after = reconstruction_report(trained, cxr_datalist, tmp_path / "after.json", meta=meta, split="test",
                                  per_class=3, features=InceptionFeatures(fid_weights, batch_size=6))
    before = reconstruction_report(untrained, cxr_datalist, tmp_path / "before.json", meta=meta, split="test",
                                   per_class=3, features=None)
    written = json.loads((tmp_path / "after.json").read_text())
    assert written["n"] == 6 and set(written["per_class"]) == {"NORMAL", "PNEUMONIA"}
    for figures in [written["overall"], *written["per_class"].values()]:
        assert {"psnr", "ssim", "ms_ssim", "fid"} <= set(figures) and figures["fid"] >= 0
        assert -1 <= figures["ssim"] <= 1 and -1 <= figures["ms_ssim"] <= 1
    assert after["overall"]["psnr"] > before["overall"]["psnr"]
    assert Path(written["grid"]).is_file()

    identity = reconstruction_report(_Identity(), cxr_datalist, tmp_path / "identity.json", meta=meta,
                                     split="test", per_class=3, features=None)
    assert identity["overall"]["ssim"] == pytest.approx(1.0) and identity["overall"]["ms_ssim"] == pytest.approx(1.0)


class _Identity(torch.nn.Module):
    """A perfect autoencoder: what the report must score as perfect."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


