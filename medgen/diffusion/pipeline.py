"""The sampling pipeline: a network and a scheduler composed, owning batching, seeding, dtype and progress.

As in diffusers, the network knows nothing of sampling and the scheduler nothing of networks. Each image has its
own seed: its starting noise is drawn from ``torch.Generator().manual_seed(seed)``, so with a deterministic sampler
(DDIM with eta=0, DPM-Solver++) an image depends only on (class, seed, steps, guidance), not on the batch it was made
in.

The compute path is chosen here: bf16 autocast with channels_last memory layout on CPUs with native bf16 (AVX-512
BF16 / AMX), bf16 (or fp16) autocast on GPUs, fp32 otherwise; ``batch_size="auto"`` picks the largest batch that fits
in a fraction of the free memory; sampling runs under ``torch.inference_mode``.

A pipeline over another space (latents) overrides only what differs: :meth:`DiffusionPipeline.make_scheduler` (the
sampling scheduler), :attr:`~DiffusionPipeline.noise_shape` (the sampler's state of one image),
:meth:`~DiffusionPipeline.finish` (state after the last step -> images) and
:meth:`~DiffusionPipeline.finish_bytes_per_image` (what ``finish`` needs in memory, for ``batch_size="auto"``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from tqdm.auto import tqdm

from medgen.diffusion.precision import autocast, resolve_dtype

logger = logging.getLogger(__name__)

SAMPLERS = ("ddim", "ddpm")


def make_scheduler(name: str, train_scheduler: Scheduler) -> Scheduler:
    """A sampling scheduler that shares the training scheduler's noise schedule and prediction type."""
    name = name.lower()
    common = {
        "num_train_timesteps": train_scheduler.num_train_timesteps,
        "prediction_type": train_scheduler.prediction_type,
        "clip_sample": True,
    }
    betas = train_scheduler.betas
    if name == "ddim":
        sched = DDIMScheduler(**common)
    elif name == "ddpm":
        sched = DDPMScheduler(**common)
    else:
        extra = _extra_samplers()
        if name not in extra:
            raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS + tuple(extra))}")
        return extra[name](train_scheduler)
    sched.betas = betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    if name == "ddim":
        sched.final_alpha_cumprod = torch.tensor(1.0)
    return sched


def available_memory(device: torch.device) -> int:
    """Bytes free for sampling on ``device``: free GPU memory, or ``MemAvailable`` of the host."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def activation_bytes_per_image(
    network: torch.nn.Module,
    shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool = False,
) -> int:
    """An upper bound of the activation memory of one image's forward pass: the sum of all module outputs
    of a batch-1 forward (inference frees most of them early, so the real peak is lower)."""
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in network.modules() if not list(m.children())]
    try:
        x = torch.zeros(1, *shape, device=device)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, dtype):
            network(x, torch.zeros(1, dtype=torch.long, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return max(total, 1)


def auto_batch_size(
    network: torch.nn.Module,
    shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool = False,
    memory_fraction: float = 0.5,
    max_batch: int | None = None,
    extra_bytes_per_image: int = 0,
) -> int:
    """The largest batch (guidance doubles it inside) whose activations fit in ``memory_fraction`` of the free
    memory, capped at ``max_batch`` (default 32 on CPU, where bigger batches stop paying off, and 256 on GPU).
    ``extra_bytes_per_image``: memory each image needs beside the network's, not doubled by guidance (a decoder run
    after sampling)."""
    if max_batch is None:
        max_batch = 256 if device.type == "cuda" else 32
    per_image = 2 * activation_bytes_per_image(network, shape, device, dtype, channels_last)
    per_image += int(extra_bytes_per_image)
    fits = int(memory_fraction * available_memory(device)) // per_image
    return int(max(1, min(max_batch, fits)))


def _extra_samplers() -> dict[str, Callable[[Scheduler], Scheduler]]:
    """Samplers registered by other medgen modules (fast solvers), looked up lazily."""
    try:
        from medgen.diffusion.solvers import SOLVERS
    except ImportError:
        return {}
    return SOLVERS


def check_guidance_interval(value: Sequence[float] | None) -> tuple[float, float] | None:
    """``[low, high]`` as two floats with 0 <= low < high, or None; anything else is a one-line ValueError."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two noise levels [low, high], got {value!r}") from None
    if not 0.0 <= low < high:
        raise ValueError(f"guidance_interval [low, high] needs 0 <= low < high, got {[low, high]}")
    return low, high


class DiffusionPipeline:
    """Class-conditional image generation with classifier-free guidance or autoguidance.

    Args:
        network: a diffusion UNet taking ``(x, timesteps, class_labels=...)``; eval mode is set here.
        scheduler: the training noise scheduler (its betas and prediction type are reused).
        classes: class names, index = label.
        image_size: spatial size of generated images.
        in_channels: image channels.
        device: where to run.
        precision: ``auto`` (bf16 where supported), ``bf16``, ``fp16`` or ``fp32``.
        batch_size: images per forward pass (doubled internally when guidance is on); ``"auto"`` or None picks
            the largest that fits in half the free memory (see :func:`auto_batch_size`).
        null_class: label of the unconditional class (default ``len(classes)``).
        channels_last: NHWC memory layout; default on for the CPU bf16 path, where oneDNN runs it faster.
        guide_network: a guide for autoguidance (:mod:`medgen.diffusion.guide`): with it, guidance moves from the
            guide's class-conditional prediction instead of the network's unconditional one.
        guidance_interval: ``[low, high]``: guide only the steps whose noise level σ lies in it, sample the others
            unguided (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
            distribution quality in diffusion models"); σ as :meth:`noise_level` gives it. None guides every step.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        scheduler: Scheduler,
        classes: Sequence[str],
        image_size: int | Sequence[int] = 64,
        in_channels: int = 1,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int | str | None = 16,
        null_class: int | None = None,
        channels_last: bool | None = None,
        guide_network: torch.nn.Module | None = None,
        guidance_interval: Sequence[float] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.guidance_interval = check_guidance_interval(guidance_interval)
        self.network = network.to(self.device).eval()
        self.guide_network = None if guide_network is None else guide_network.to(self.device).eval()
        self.train_scheduler = scheduler
        self.classes = list(classes)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.in_channels = in_channels
        self.dtype = resolve_dtype(self.device, precision)
        self._batch_size = None if batch_size in (None, "auto") else int(batch_size)  # type: ignore[arg-type]
        if self._batch_size is not None and self._batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.null_class = len(self.classes) if null_class is None else null_class
        if channels_last is None:
            channels_last = self.dtype is not None and self.device.type == "cpu"
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
            if self.guide_network is not None:
                self.guide_network = self.guide_network.to(memory_format=torch.channels_last)
        self.channels_last = channels_last

    @property
    def batch_size(self) -> int:
        """Images per forward pass; with ``batch_size="auto"`` chosen (once) from the free memory."""
        if self._batch_size is None:
            self._batch_size = auto_batch_size(
                self.network, self.noise_shape, self.device, self.dtype, self.channels_last,
                extra_bytes_per_image=self.finish_bytes_per_image(),
            )
            logger.info("sampling batch size %d (fits the free memory on %s)", self._batch_size, self.device)
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = int(value)

    @property
    def compute_path(self) -> str:
        """How the network runs, e.g. ``cpu bf16-autocast channels_last``."""
        precision = {None: "fp32", torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast"}[self.dtype]
        return " ".join([self.device.type, precision] + (["channels_last"] if self.channels_last else []))

    def class_index(self, name_or_index: str | int) -> int:
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if not 0 <= index < len(self.classes):
                raise ValueError(f"class index {index} out of range; classes are {self.classes}")
            return index
        if name_or_index not in self.classes:
            raise ValueError(f"unknown class {name_or_index!r}; classes are {self.classes}")
        return self.classes.index(name_or_index)

    # ---- what a pipeline over another space (latents) overrides ------------------------------------------------
    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The sampler's state of one image (and its noise): ``(in_channels, *image_size)``."""
        return (self.in_channels, *self.image_size)

    def make_scheduler(self, name: str) -> Scheduler:
        """The scheduler a sampling run steps: :func:`make_scheduler` over the training schedule (x0 clipped to
        [-1, 1], the range of the images)."""
        return make_scheduler(name, self.train_scheduler)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The images from the sampler's state after the last step: clamped to [-1, 1]."""
        return x.clamp(-1.0, 1.0)

    def finish_bytes_per_image(self) -> int:
        """Memory per image that :meth:`finish` needs beside the network's activations (none for a clamp)."""
        return 0

    # ---- sampling -------------------------------------------------------------------------------------------------
    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Starting noise, one generator per image so each image is reproducible from its seed alone."""
        noise = [torch.randn(self.noise_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device)

    def noise_level(self, t: int) -> float:
        """σ of timestep ``t`` in the variance-exploding terms of Karras et al. 2022: ``sqrt((1 - ᾱ_t) / ᾱ_t)``,
        the noise-to-signal ratio of x_t (in the units of the images, or of the scaled latents)."""
        alpha_bar = float(self.train_scheduler.alphas_cumprod[int(t)])
        return ((1.0 - alpha_bar) / alpha_bar) ** 0.5

    def guidance_at(self, t: int, guidance_scale: float) -> float:
        """The guidance scale step ``t`` uses: ``guidance_scale`` inside :attr:`guidance_interval`, else 1."""
        if self.guidance_interval is None or guidance_scale == 1.0:
            return guidance_scale
        low, high = self.guidance_interval
        return guidance_scale if low <= self.noise_level(t) <= high else 1.0

    def predict(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Network output, guided: ``u + w (c - u)`` with ``u`` the unconditional output (classifier-free guidance)
        or, with a guide network, the guide's conditional output (autoguidance); w = 1 is plain conditional, as
        it is outside :attr:`guidance_interval`."""
        guidance_scale = self.guidance_at(int(t), guidance_scale)
        timesteps = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        if self.guide_network is not None and guidance_scale != 1.0:
            model_in = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            with autocast(self.device, self.dtype):
                cond = self.network(model_in, timesteps, class_labels=labels).float()
                weak = self.guide_network(model_in, timesteps, class_labels=labels).float()
            return weak + guidance_scale * (cond - weak)
        if guidance_scale == 1.0:
            model_in, steps, cls = x, timesteps, labels
        else:
            model_in = torch.cat([x, x])
            steps = torch.cat([timesteps, timesteps])
            cls = torch.cat([labels, torch.full_like(labels, self.null_class)])
        if self.channels_last:
            model_in = model_in.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            out = self.network(model_in, steps, class_labels=cls).float()
        if guidance_scale == 1.0:
            return out
        cond, uncond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def network_passes(self, num_inference_steps: int, sampler: str | None = None) -> int:
        """Times one image goes through the network in a run of ``sampler`` (guidance doubles the batch of each
        pass, not their number): one per step for DDIM, DDPM and the solvers."""
        return int(num_inference_steps)

    @torch.inference_mode()
    def run_sampler(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        sampler: str = "ddim",
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The sampler's state after the last step, ``(N, *noise_shape)``, before :meth:`finish`."""
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
        scheduler = self.make_scheduler(sampler)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        x = self.initial_noise(seeds)
        cls = torch.as_tensor([int(v) for v in labels], device=self.device, dtype=torch.long)
        generator = torch.Generator(device=self.device).manual_seed(int(seeds[0]) + 1)
        timesteps = scheduler.timesteps
        for i, t in enumerate(tqdm(timesteps, desc="sampling", leave=False, disable=not progress)):
            model_output = self.predict(x, t, cls, guidance_scale)
            x, _ = scheduler.step(model_output, int(t), x, generator=generator)
            if callback is not None:
                callback(i + 1, len(timesteps))
        return x

    @torch.inference_mode()
    def generate_batch(self, labels: Sequence[int], seeds: Sequence[int], num_inference_steps: int = 50,
                       guidance_scale: float = 1.0, sampler: str = "ddim", progress: bool = False,
                       callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """One batch of images in [-1, 1], shape ``(N, C, H, W)``: :meth:`run_sampler`, then :meth:`finish`."""
        return self.finish(self.run_sampler(labels, seeds, num_inference_steps, guidance_scale, sampler, progress,
                                            callback))

    def iter_generate(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        sampler: str = "ddim",
        progress: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple[list[int], list[int], torch.Tensor]]:
        """Yield ``(labels, seeds, images)`` batch by batch, so callers write images as they are made."""
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
        total = len(seeds)
        bar = tqdm(total=total, desc=f"generating ({sampler}, {num_inference_steps} steps)", disable=not progress)
        done = 0
        batch_size = self.batch_size
        for start in range(0, total, batch_size):
            batch_labels = [int(v) for v in labels[start : start + batch_size]]
            batch_seeds = [int(v) for v in seeds[start : start + batch_size]]

            def step_callback(step: int, steps: int, _done: int = done, _n: int = len(batch_seeds)) -> None:
                if callback is not None:
                    callback(_done * steps + step * _n, total * steps)

            images = self.generate_batch(
                batch_labels, batch_seeds, num_inference_steps, guidance_scale, sampler, callback=step_callback
            )
            done += len(batch_seeds)
            bar.update(len(batch_seeds))
            yield batch_labels, batch_seeds, images.cpu()
        bar.close()

    def generate(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        sampler: str = "ddim",
        progress: bool = False,
    ) -> torch.Tensor:
        """All images at once, ``(N, C, H, W)`` in [-1, 1]. For many images prefer :meth:`iter_generate`."""
        batches = [
            img
            for _, _, img in self.iter_generate(
                labels, seeds, num_inference_steps, guidance_scale, sampler, progress=progress
            )
        ]
        return torch.cat(batches) if batches else torch.empty(0, self.in_channels, *self.image_size)

    @classmethod
    def from_ema_copy(cls, network: torch.nn.Module, *args, **kwargs) -> DiffusionPipeline:
        """A pipeline over a private copy of ``network`` (so training can go on)."""
        return cls(copy.deepcopy(network), *args, **kwargs)
