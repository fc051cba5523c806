"""Latent bundles (cxr_ldm, brain_mri_ldm): reconstruction ceiling, sampling speed against MONAI's pixel-space
DDIM-50, and training throughput of both stages, in one run on one machine.

    python -m benchmarks.latent --bundle brain_mri_ldm              # all three parts
    python -m benchmarks.latent --bundle cxr_ldm --skip-reconstruction

Rows of the speed table, at the bundle's image size, batch ``--batch``, the same seeds and class labels:
(b) MONAI ``DiffusionInferer.sample`` with ``DDIMScheduler`` 50 steps, fp32, in pixel space, on the pixel bundles'
UNet (cxr_ddpm's ``network_def``, its shipped weights; the cost of a step does not depend on the weights) - the
MONAI tutorial way at this size; (c) the latent bundle's own ``inference.yaml`` pipeline (its shipped weights,
medgen's compute path) at DDIM-50 and at its default sampler, decoding included. Pixel runs are timed over
``--measure-steps`` steps and extrapolated (the table says so); latent runs are timed whole. The quality side of
the same comparison is ``python -m benchmarks.quality --bundle <latent bundle>`` (FID / floor per class).

Reconstruction: :func:`medgen.autoencoder.reconstruction_report` on the held-out split (PSNR, SSIM, MS-SSIM,
Inception-FID of reconstructions vs originals per class): the ceiling any diffusion model on these latents reaches.
Training: images/s of one training iteration of each stage (autoencoder: L1 + KL + domain perceptual +
adversarial at the config's crop size and batch; diffusion: the UNet on latents through medgen's inferer), timed
in turn; the wall-clock to the shipped weights is what their model card records.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler

from benchmarks.common import REPO, best, bundle_network, interleaved, machine, table, weights_digest, write_json
from benchmarks.sampling import LabelledNetwork, medgen_sample, monai_sample


def inference_parser(bundle: Path, overrides: dict[str, Any] | None = None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    for key, value in (overrides or {}).items():
        parser[key] = value
    parser.parse()
    return parser


def speed(bundle: Path, batch: int, measure: int, repeats: int) -> list[dict[str, Any]]:
    parser = inference_parser(bundle, {"batch_size": batch, "device": "$torch.device('cpu')"})
    pipe = parser.get_parsed_content("pipeline")
    size, channels = int(parser.get_parsed_content("image_size")), int(parser.get_parsed_content("channels"))
    sampler, steps = parser["sampler"], int(parser["num_inference_steps"])
    classes = parser.get_parsed_content("classes")
    seeds = list(range(batch))
    labels = [s % len(classes) for s in seeds]
    pixel_net, pixel_weights = bundle_network()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, channels, size, size, generator=generator)
    model = LabelledNetwork(pixel_net, torch.tensor(labels))
    runs = {
        "(b) MONAI DDIM pixel fp32": ("ddim", 50, "fp32", measure,
                                      lambda: monai_sample(model, noise, DDIMScheduler(), 50, measure)),
        "(c) medgen latent DDIM": ("ddim", 50, pipe.compute_path, 50,
                                   lambda: medgen_sample(pipe, labels, seeds, "ddim", 50)),
        f"(c) medgen latent {sampler}-{steps}": (sampler, steps, pipe.compute_path, steps,
                                                lambda: medgen_sample(pipe, labels, seeds, sampler, steps)),
    }
    guidance = float(parser["guidance_scale"])
    if guidance != 1.0:  # the bundle's default sampling: a second network pass per step (its guide or the null class)
        how = "autoguidance" if getattr(pipe, "guide_network", None) is not None else "guidance"
        runs[f"(c) medgen latent {sampler}-{steps}, {how} w {guidance:g} (the default)"] = (
            sampler, steps, pipe.compute_path, steps,
            lambda: medgen_sample(pipe, labels, seeds, sampler, steps, guidance_scale=guidance))
    times = interleaved({name: run[4] for name, run in runs.items()}, repeats)
    rows = []
    for name, (name_sampler, total, path, timed_steps, _) in runs.items():
        seconds = best(times[name]) * total / timed_steps
        rows.append({"size": size, "method": name, "sampler": name_sampler, "steps": total, "compute": path,
                     "batch": batch, "s/image": seconds / batch, "images/s": batch / seconds,
                     "timed": "full run" if timed_steps == total else f"{timed_steps} of {total} steps, extrapolated",
                     "times_s": times[name]})
    base = rows[0]["s/image"]
    for row in rows:
        row["x vs (b)"] = base / row["s/image"]
    rows[0]["weights"] = pixel_weights
    return rows


def reconstruction(bundle: Path, per_class: int, out_dir: Path) -> dict[str, Any]:
    from benchmarks.quality import bundle_datalist
    from medgen.autoencoder import load_autoencoder, reconstruction_report

    weights = bundle / "models" / "model_autoencoder.pt"
    network, meta = load_autoencoder(weights)
    datalist = bundle_datalist(bundle, None)
    split = "test" if datalist.get("test") else "validation"
    return reconstruction_report(network, datalist, out_dir / f"reconstruction_{bundle.name}.json", meta=meta,
                                 split=split, per_class=per_class, weights=weights)


def training_speed(bundle: Path, repeats: int) -> list[dict[str, Any]]:
    """images/s of one iteration of each stage, with the shapes, losses and compute path of the bundle's configs."""
    import yaml
    from monai.networks.nets import PatchDiscriminator

    from medgen.autoencoder import DiscriminatorLoss, DomainPerceptualLoss, GeneratorLoss, load_autoencoder
    from medgen.diffusion import ConditionalDiffusionInferer
    from medgen.diffusion.precision import autocast, resolve_dtype
    from medgen.metrics.classifier import build_classifier

    ae_cfg = yaml.safe_load((bundle / "configs" / "train_autoencoder.yaml").read_text())
    ldm_cfg = yaml.safe_load((bundle / "configs" / "train_diffusion.yaml").read_text())
    autoencoder, _ = load_autoencoder(bundle / "models" / "model_autoencoder.pt")
    autoencoder.train()
    crop, batch = int(ae_cfg["crop_size"] or ae_cfg["image_size"]), int(ae_cfg["batch_size"])
    disc = PatchDiscriminator(spatial_dims=2, in_channels=ae_cfg["channels"], channels=ae_cfg["discriminator_channels"],
                              num_layers_d=ae_cfg["discriminator_layers"], norm="INSTANCE")
    perceptual = DomainPerceptualLoss(network=build_classifier(2, ae_cfg["channels"]))
    g_loss = GeneratorLoss(ae_cfg["kl_weight"], ae_cfg["perceptual_weight"], perceptual, ae_cfg["adv_weight"])
    d_loss = DiscriminatorLoss(ae_cfg["adv_weight"])
    g_opt, d_opt = torch.optim.Adam(autoencoder.parameters(), 1e-4), torch.optim.Adam(disc.parameters(), 1e-4)
    images = torch.rand(batch, ae_cfg["channels"], crop, crop) * 2 - 1
    dtype = resolve_dtype("cpu", ae_cfg.get("precision", "auto"))

    def ae_step() -> None:
        g_opt.zero_grad()
        with autocast("cpu", dtype):
            recon, mu, sigma = (t.float() for t in autoencoder(images))
            terms = g_loss(recon, images, mu, sigma, disc(recon)[-1].float())
        terms["loss"].backward()
        g_opt.step()
        d_opt.zero_grad()
        with autocast("cpu", dtype):
            loss = d_loss(disc(recon.detach())[-1].float(), disc(images)[-1].float())
        loss.backward()
        d_opt.step()

    parser = inference_parser(bundle)
    unet = parser.get_parsed_content("network_def").train()
    scheduler = parser.get_parsed_content("scheduler")
    latent_shape = parser.get_parsed_content("weights_meta")["config"]["latent_shape"]
    ldm_batch = int(ldm_cfg["batch_size"])
    latents = torch.randn(ldm_batch, *latent_shape)
    inferer = ConditionalDiffusionInferer(scheduler, precision=ldm_cfg.get("precision", "auto"))
    u_opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    labels = torch.zeros(ldm_batch, dtype=torch.long)

    def ldm_step() -> None:
        u_opt.zero_grad()
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (ldm_batch,))
        pred = inferer(latents, unet, noise, t, class_labels=labels)
        torch.nn.functional.mse_loss(pred.float(), noise).backward()
        u_opt.step()

    times = interleaved({"autoencoder": ae_step, "diffusion": ldm_step}, repeats)
    return [
        {"stage": "autoencoder", "input": f"{batch} x {ae_cfg['channels']} x {crop} x {crop} crops",
         "compute": str(dtype or "fp32"), "s/iteration": best(times["autoencoder"]),
         "images/s": batch / best(times["autoencoder"]), "times_s": times["autoencoder"]},
        {"stage": "diffusion", "input": f"{ldm_batch} x {' x '.join(map(str, latent_shape))} latents",
         "compute": str(resolve_dtype("cpu", ldm_cfg.get("precision", "auto")) or "fp32"),
         "s/iteration": best(times["diffusion"]), "images/s": ldm_batch / best(times["diffusion"]),
         "times_s": times["diffusion"]},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="a latent bundle name or folder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--measure-steps", type=int, default=3, help="pixel DDIM steps timed (then extrapolated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recon-per-class", type=int, default=100, help="held-out images per class reconstructed")
    parser.add_argument("--skip-reconstruction", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out-dir", default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    from medgen.bundles import find_bundle

    bundle = find_bundle(args.bundle).resolve()
    out_dir = Path(args.out_dir) if args.out_dir else REPO / "benchmarks" / "results"
    payload: dict[str, Any] = {"bundle": bundle.name, "machine": machine(),
                               "weights": {name: weights_digest(bundle / "models" / name)
                                           for name in ("model.pt", "model_autoencoder.pt")}}
    print(f"machine: {payload['machine']}")
    start = time.perf_counter()
    rows = speed(bundle, args.batch, args.measure_steps, args.repeats)
    payload["sampling"] = rows
    print(table(rows, ["size", "method", "steps", "compute", "batch", "s/image", "images/s", "x vs (b)", "timed"]))
    if not args.skip_training:
        payload["training"] = training_speed(bundle, args.repeats)
        print(table(payload["training"], ["stage", "input", "compute", "s/iteration", "images/s"]))
    if not args.skip_reconstruction:
        report = reconstruction(bundle, args.recon_per_class, out_dir)
        payload["reconstruction"] = report
        recon_rows = [{"class": name, **figures} for name, figures in {**report["per_class"],
                                                                      "overall": report["overall"]}.items()]
        print(table(recon_rows, ["class", "n", "psnr", "ssim", "ms_ssim", "fid"]))
    payload["seconds"] = time.perf_counter() - start
    print(f"wrote {write_json(f'latent_{bundle.name}', payload, out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
