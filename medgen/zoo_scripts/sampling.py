"""Write generated images of every class as PNG files plus one metadata line each, for an exported bundle."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def to_uint8(image) -> np.ndarray:
    """A ``(C, H, W)`` tensor in [-1, 1] as an 8-bit ``(H, W)`` or ``(H, W, 3)`` array."""
    array = ((image.float().clamp(-1, 1).cpu().numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


XMP_PACKET = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>'
    '</rdf:RDF></x:xmpmeta>'
)  # medgen.data.provenance.XMP_PACKET: this bundle runs without medgen
SETTINGS = ("sampler", "steps", "guidance_scale", "guidance_interval")
#: an image this script writes into a class folder: ``<seed>.png``; one left without its line by a killed run is kept
IMAGE_NAME = re.compile(r"^\d{6,}\.png$")


def synthetic_png_info() -> PngInfo:
    """The marks medgen's own PNGs carry: a ``Description`` and the IPTC digital source type of generated images (in
    XMP), so an image copied out of this folder still says it is synthetic."""
    info = PngInfo()
    info.add_text("Description", "synthetic image (medgen)")
    info.add_itxt("XML:com.adobe.xmp", XMP_PACKET)
    return info


def earlier_records(output_dir: str, classes: Sequence[str], settings: dict) -> list[dict]:
    """The lines of the images an earlier run of this script left in ``output_dir``, checked before any work: the
    folder may hold only those (and images a killed run wrote before its lines), made with the same ``settings``;
    anything else would be mixed with these synthetic images (a data set's class folders, another sampling)."""
    jsonl = os.path.join(output_dir, "samples.jsonl")
    hint = "give another --output_dir"
    records = []
    if os.path.isfile(jsonl):
        with open(jsonl) as f:
            for number, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                        raise ValueError('no "image"')
                except ValueError as err:
                    raise ValueError(f"{jsonl} line {number}: not a sample line ({err}); {hint}") from None
                differs = {k: record.get(k) for k in SETTINGS if record.get(k) != settings.get(k)}
                if differs:
                    raise ValueError(f"{jsonl}: {record['image']} was made with {differs}, these would be made with "
                                     f"{ {k: settings.get(k) for k in differs} }: the folder would mix two ways of "
                                     f"sampling; {hint}")
                records.append(record)
    named = {os.path.normpath(r["image"]) for r in records}
    for root, _, files in os.walk(output_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), output_dir)
            folder = os.path.dirname(rel)
            if rel in ("samples.jsonl", "samples.jsonl.part") or rel in named or name.endswith(".part") or (
                    folder in classes and IMAGE_NAME.match(name)):
                continue
            raise ValueError(f"{output_dir} holds {rel}, which no run of this bundle's sampling wrote: the synthetic "
                             f"images would be mixed with it; {hint}")
    return records


def write_samples(pipeline, output_dir: str, per_class: int, seed: int = 0, sampler: str = "dpmpp2m",
                  num_inference_steps: int = 15, guidance_scale: float = 1.0,
                  class_names: Sequence[str] | None = None) -> str:
    """Generate ``per_class`` images of each class (seeds ``seed``, ``seed + 1``, ... per class) into
    ``<output_dir>/<class>/<seed>.png`` and ``samples.jsonl``; returns the JSONL path. Every image is synthetic.

    A folder an earlier run wrote with the same settings gets these images added (``samples.jsonl`` names both runs');
    any other file in it, or other settings, stops the run before any work with one line (:func:`earlier_records`;
    ``SystemExit``)."""
    interval = getattr(pipeline, "guidance_interval", None)
    settings = {"sampler": sampler, "steps": num_inference_steps, "guidance_scale": guidance_scale,
                "guidance_interval": None if interval is None else [float(v) for v in interval]}
    try:
        earlier = earlier_records(output_dir, list(pipeline.classes), settings) if os.path.isdir(output_dir) else []
    except ValueError as err:  # one line for the bundle's user, not a traceback through MONAI's config parser
        raise SystemExit(f"error: {err}") from None
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
            Image.fromarray(to_uint8(image)).save(path + ".part", format="PNG", pnginfo=synthetic_png_info())
            os.replace(path + ".part", path)
            lines.append({"image": os.path.relpath(path, output_dir), "label": label, "class": name,
                          "seed": image_seed, "sampler": sampler, "steps": num_inference_steps,
                          "guidance_scale": guidance_scale, "synthetic": True})
            if interval is not None:
                lines[-1]["guidance_interval"] = settings["guidance_interval"]
    made = {os.path.normpath(line["image"]) for line in lines}
    kept = [r for r in earlier if os.path.normpath(r["image"]) not in made]  # an image made again: its new line
    jsonl = os.path.join(output_dir, "samples.jsonl")
    with open(jsonl + ".part", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in kept + lines)
    os.replace(jsonl + ".part", jsonl)
    print(f"wrote {len(lines)} synthetic images to {output_dir}")
    return jsonl
