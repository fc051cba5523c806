"""Autoguidance: the guided step, the checks that a guide belongs to the model it guides, and samples that record it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from medgen.diffusion.guide import load_guide
from medgen.diffusion.pipeline import DiffusionPipeline
from medgen.diffusion.sample_run import SampleRunner
from medgen.networks import ConditionalDiffusionUNet
from medgen.networks.weights_meta import WeightsFileError, build_meta, sha256_of, write_sidecar

CLASSES = ["NORMAL", "PNEUMONIA"]


def unet(width: int = 8, seed: int = 0, num_classes: int = 2) -> ConditionalDiffusionUNet:
    torch.manual_seed(seed)
    net = ConditionalDiffusionUNet(num_classes=num_classes, channels=(width, 2 * width), attention_levels=(False, True),
                                   num_res_blocks=1, num_head_channels=8, norm_num_groups=8)
    with torch.no_grad():  # MONAI starts its output convolutions at zero: give the network an output
        for param in net.parameters():
            if not param.any():
                param.normal_(0.0, 0.1)
    return net


def save(net: torch.nn.Module, path: Path, classes=CLASSES, image_size: int = 16, prediction_type: str = "epsilon",
         config: dict | None = None) -> Path:
    torch.save(net.state_dict(), path)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    write_sidecar(path, build_meta(classes, image_size, 1, net, scheduler, config=config, bundle="cxr_ddpm"))
    return path


def pipeline(guide: torch.nn.Module | None = None, network: torch.nn.Module | None = None) -> DiffusionPipeline:
    return DiffusionPipeline(network or unet(), DDPMScheduler(num_train_timesteps=1000), CLASSES, image_size=16,
                             precision="fp32", batch_size=4, guide_network=guide)


def test_the_guided_step_moves_from_the_guide_towards_the_model() -> None:
    main, guide = unet(8, seed=0), unet(8, seed=1)
    pipe = pipeline(guide, main)
    x, labels = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 0])
    with torch.no_grad():
        cond = main(x, torch.full((3,), 500), class_labels=labels)
        weak = guide(x, torch.full((3,), 500), class_labels=labels)
        guided = pipe.predict(x, torch.tensor(500), labels, 2.5)
        plain = pipe.predict(x, torch.tensor(500), labels, 1.0)
    torch.testing.assert_close(guided, weak + 2.5 * (cond - weak))
    torch.testing.assert_close(plain, cond)  # w = 1: the model alone, whatever the guide
    assert not torch.allclose(guided, pipeline(None, main).predict(x, torch.tensor(500), labels, 2.5))  # not CFG


def test_a_guide_that_is_the_model_itself_changes_nothing() -> None:
    main = unet(8)
    images = pipeline(main, main).generate([0, 1], [3, 4], num_inference_steps=4, guidance_scale=3.0,
                                           sampler="dpmpp2m")
    unguided = pipeline(None, main).generate([0, 1], [3, 4], num_inference_steps=4, guidance_scale=1.0,
                                             sampler="dpmpp2m")
    torch.testing.assert_close(images, unguided, atol=1e-5, rtol=0)


def test_load_guide_builds_the_recorded_network(tmp_path: Path) -> None:
    weights = save(unet(16), tmp_path / "model.pt")
    small = unet(8, seed=3)
    guide = load_guide(save(small, tmp_path / "guide.pt"), weights, DDPMScheduler(num_train_timesteps=1000))
    assert guide.weights_file == str(tmp_path / "guide.pt")
    for (name, a), b in zip(guide.state_dict().items(), small.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_an_edm_guide_of_an_epsilon_model_is_accepted(tmp_path: Path) -> None:
    weights = save(unet(16), tmp_path / "model.pt")
    edm = save(unet(8), tmp_path / "guide.pt", config={"preconditioning": "edm", "edm_sigma_data": 0.5})
    guide = load_guide(edm, weights, DDPMScheduler(num_train_timesteps=1000))
    assert type(guide).__name__ == "PreconditionedNetwork"  # turned into epsilon, as the model's output is


@pytest.mark.parametrize(("changes", "named"), [
    ({"classes": ["a", "b", "c"]}, "classes"),
    ({"image_size": 32}, "image_size"),
    ({"prediction_type": "v_prediction"}, "scheduler.prediction_type"),
])
def test_a_guide_of_another_task_is_refused_in_one_line(tmp_path: Path, changes: dict, named: str) -> None:
    weights = save(unet(16), tmp_path / "model.pt")
    classes = changes.get("classes", CLASSES)
    other = save(unet(8, num_classes=len(classes)), tmp_path / "guide.pt", classes=classes,
                 image_size=changes.get("image_size", 16), prediction_type=changes.get("prediction_type", "epsilon"))
    with pytest.raises(WeightsFileError) as err:
        load_guide(other, weights, DDPMScheduler(num_train_timesteps=1000))
    message = str(err.value)
    assert "\n" not in message and str(other) in message and named in message and "(guide)" in message


def test_a_guide_without_metadata_is_refused(tmp_path: Path) -> None:
    weights = save(unet(16), tmp_path / "model.pt")
    bare = tmp_path / "bare.pt"
    torch.save(unet(8).state_dict(), bare)
    with pytest.raises(WeightsFileError, match="bare.pt.*no metadata"):
        load_guide(bare, weights, DDPMScheduler(num_train_timesteps=1000))


def test_samples_record_their_guide_and_never_mix_with_other_guidance(tmp_path: Path) -> None:
    weights = save(unet(16), tmp_path / "model.pt")
    guide_file = save(unet(8, seed=2), tmp_path / "guide.pt")
    guide = load_guide(guide_file, weights, DDPMScheduler(num_train_timesteps=1000))
    settings = {"per_class": 2, "seed": 10, "sampler": "dpmpp2m", "num_inference_steps": 3, "checkpoint": weights}
    out = tmp_path / "samples"
    SampleRunner(pipeline(guide), out, guidance_scale=2.0, **settings).run()
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4
    assert {(r["guide"], r["guide_sha256"]) for r in records} == {(str(guide_file), sha256_of(guide_file))}

    SampleRunner(pipeline(guide), out, guidance_scale=2.0, **{**settings, "seed": 14}).run()  # same: adds
    lines = len((out / "samples.jsonl").read_text().splitlines())
    assert lines == 8
    for other, named in ((pipeline(None), "guide_sha256"), (pipeline(guide), "guidance_scale 2.0 there vs 3.0 now")):
        scale = 3.0 if "3.0" in named else 2.0
        with pytest.raises(ValueError, match=named) as err:
            SampleRunner(other, out, guidance_scale=scale, **{**settings, "per_class": 4}).run()
        assert str(out) in str(err.value)
        assert str(err.value).endswith("write to another folder (--out DIR, --output_dir DIR)")  # both spellings
    assert len((out / "samples.jsonl").read_text().splitlines()) == lines  # nothing was added


def test_a_bundle_s_guide_guides_only_the_weights_it_was_chosen_for(tmp_path: Path) -> None:
    from medgen.diffusion.guide import default_guide

    models = tmp_path / "bundle" / "models"
    models.mkdir(parents=True)
    shipped, own = save(unet(16), models / "model.pt"), save(unet(16, seed=5), tmp_path / "own.pt")
    assert default_guide(tmp_path / "bundle", shipped) is None  # no guide shipped
    guide = save(unet(8), models / "model_guide.pt")
    sidecar = models / "model_guide.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "guides_sha256": sha256_of(shipped)}))
    assert default_guide(tmp_path / "bundle", shipped) == str(guide)
    assert default_guide(tmp_path / "bundle", own) is None  # a user's own weights: classifier-free guidance


def test_a_latent_guide_on_a_fine_tuned_decoder_s_latents_guides_weights_of_the_original(tmp_path: Path) -> None:
    """A bundle's shipped autoencoder can be its diffusion weights' one with the decoder fine-tuned afterwards (the
    same latents, another sha256); a guide trained later on the shipped one guides those weights. An autoencoder
    with another encoder gives other latents: refused."""
    from medgen.autoencoder import build_autoencoder, init_autoencoder
    from medgen.autoencoder.weights import AutoencoderWeightsMeta

    tiny = {"channels": (8, 16), "latent_channels": 2, "num_res_blocks": 1, "norm_num_groups": 4}

    def autoencoder(path: Path, start: Path | None = None, encoder: bool = False) -> str:
        net = build_autoencoder(1, **tiny)
        if start is not None:
            net = init_autoencoder(net, start, train_encoder=encoder)
            with torch.no_grad():  # a decoder (and, trained, an encoder) that learned something
                for name, param in net.named_parameters():
                    if encoder or name.startswith("decoder"):
                        param.add_(0.01)
        torch.save(net.state_dict(), path)
        write_sidecar(path, AutoencoderWeightsMeta(CLASSES, 16, 1, net).meta)
        return sha256_of(path)

    def latent(name: str, folder: Path, autoencoder_sha: str, width: int) -> Path:
        folder.mkdir(exist_ok=True)
        return save(unet(width), folder / name, config={"route": "latent", "autoencoder_file": "model_autoencoder.pt",
                                                        "autoencoder_sha256": autoencoder_sha, "scale_factor": 0.5,
                                                        "latent_shape": [2, 8, 8]})

    bundle, runs = tmp_path / "models", tmp_path / "runs"
    runs.mkdir()
    original = autoencoder(runs / "original.pt")
    weights = latent("model.pt", bundle, original, 16)  # trained on the original autoencoder's latents
    shipped = autoencoder(bundle / "model_autoencoder.pt", start=runs / "original.pt")  # decoder fine-tuned
    guide_file = latent("guide.pt", runs, shipped, 8)  # trained later, on the shipped one
    assert shipped != original
    guide = load_guide(guide_file, weights, DDPMScheduler(num_train_timesteps=1000))
    assert guide.weights_file == str(guide_file)

    autoencoder(bundle / "model_autoencoder.pt", start=runs / "original.pt", encoder=True)  # other latents
    with pytest.raises(WeightsFileError, match="autoencoder_sha256"):
        load_guide(guide_file, weights, DDPMScheduler(num_train_timesteps=1000))


def test_a_guidance_interval_guides_only_the_steps_whose_noise_level_lies_in_it(tmp_path: Path) -> None:
    main, guide = unet(8, seed=0), unet(8, seed=1)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pipe = DiffusionPipeline(main, scheduler, CLASSES, image_size=16, precision="fp32", batch_size=4,
                             guide_network=guide, guidance_interval=[0.0, 2.0])
    alpha_bar = scheduler.alphas_cumprod
    assert pipe.noise_level(300) == pytest.approx(float(((1 - alpha_bar[300]) / alpha_bar[300]) ** 0.5))
    inside, outside = 300, 900  # sigma 0.74 and 9.3 on MONAI's default linear schedule
    assert pipe.noise_level(inside) < 2.0 < pipe.noise_level(outside)
    x, labels = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    everywhere = pipeline(guide, main)
    with torch.no_grad():
        torch.testing.assert_close(pipe.predict(x, torch.tensor(inside), labels, 2.5),
                                   everywhere.predict(x, torch.tensor(inside), labels, 2.5))
        torch.testing.assert_close(pipe.predict(x, torch.tensor(outside), labels, 2.5),
                                   main(x, torch.full((2,), outside), class_labels=labels))  # unguided there
    images = pipe.generate([0, 1], [3, 4], num_inference_steps=4, guidance_scale=2.5, sampler="dpmpp2m")
    assert not torch.allclose(images, everywhere.generate([0, 1], [3, 4], num_inference_steps=4, guidance_scale=2.5,
                                                          sampler="dpmpp2m"))
    for bad in ([2.0, 1.0], [-1.0, 1.0], [1.0], "x"):
        with pytest.raises(ValueError, match="guidance_interval"):
            DiffusionPipeline(main, scheduler, CLASSES, image_size=16, guidance_interval=bad)

    # each image records the interval, and a folder never mixes images made with and without it
    weights = save(main, tmp_path / "model.pt")
    settings = {"per_class": 1, "seed": 0, "sampler": "dpmpp2m", "num_inference_steps": 3, "checkpoint": weights,
                "guidance_scale": 2.5}
    out = tmp_path / "samples"
    SampleRunner(pipe, out, **settings).run()
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["guidance_interval"] for r in records] == [[0.0, 2.0], [0.0, 2.0]]
    with pytest.raises(ValueError, match=r"guidance_interval \[0.0, 2.0\] there vs None now"):
        SampleRunner(everywhere, out, **settings).run()


def test_a_score_model_s_guidance_interval_reads_its_own_sigma_levels() -> None:
    from medgen.diffusion.langevin import LangevinPipeline
    from medgen.diffusion.ncsn import NCSNScheduler
    from medgen.networks.score import ScoreNetwork

    scheduler = NCSNScheduler(num_train_timesteps=10, sigma_max=50.0, sigma_min=0.01)
    network = ScoreNetwork(unet(8), sigma_data=0.5)
    pipe = LangevinPipeline(network, scheduler, CLASSES, image_size=16, precision="fp32",
                            guidance_interval=[0.0, 1.0])
    assert [pipe.noise_level(t) for t in (0, 9)] == [pytest.approx(50.0), pytest.approx(0.01)]
    assert (pipe.guidance_at(0, 2.0), pipe.guidance_at(9, 2.0)) == (1.0, 2.0)
