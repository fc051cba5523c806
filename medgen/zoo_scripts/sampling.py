"""Write generated images of every class as PNG files plus one metadata line each, for an exported bundle."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_uint8(image) -> np.ndarray:
    """A ``(C, H, W)`` tensor in [-1, 1] as an 8-bit ``(H, W)`` or ``(H, W, 3)`` array."""
    array = ((image.float().clamp(-1, 1).cpu().numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


def write_samples(pipeline, output_dir: str, per_class: int, seed: int = 0, sampler: str = "dpmpp2m",
                  num_inference_steps: int = 15, guidance_scale: float = 1.0,
                  class_names: Sequence[str] | None = None) -> str:
    """Generate ``per_class`` images of each class (seeds ``seed``, ``seed + 1``, ... per class) into
    ``<output_dir>/<class>/<seed>.png`` and ``samples.jsonl``; returns the JSONL path. Every image is synthetic."""
    os.makedirs(output_dir, exist_ok=True)
    names = list(class_names) if class_names else list(pipeline.classes)
    labels = [pipeline.class_index(n) for n in names for _ in range(per_class)]
    seeds = [seed + i for _ in names for i in range(per_class)]
    lines = []
    for batch_labels, batch_seeds, images in pipeline.iter_generate(labels, seeds, num_inference_steps,
                                                                    guidance_scale, sampler):
        for label, image_seed, image in zip(batch_labels, batch_seeds, images):
            name = pipeline.classes[label]
            folder = os.path.join(output_dir, name)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{image_seed:06d}.png")
            Image.fromarray(to_uint8(image)).save(path + ".part", format="PNG")
            os.replace(path + ".part", path)
            lines.append({"image": os.path.relpath(path, output_dir), "label": label, "class": name,
                          "seed": image_seed, "sampler": sampler, "steps": num_inference_steps,
                          "guidance_scale": guidance_scale, "synthetic": True})
            if getattr(pipeline, "guidance_interval", None) is not None:
                lines[-1]["guidance_interval"] = [float(v) for v in pipeline.guidance_interval]
    jsonl = os.path.join(output_dir, "samples.jsonl")
    with open(jsonl + ".part", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    os.replace(jsonl + ".part", jsonl)
    print(f"wrote {len(lines)} synthetic images to {output_dir}")
    return jsonl
