"""Write images in [-1, 1] as PNG files and labelled grids (the pictures people look at)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from medgen.fileio import atomic_write


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` or ``(H, W)`` image in [-1, 1] as ``(H, W)`` or ``(H, W, 3)`` uint8."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array[:3], 0, -1)
    return np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)


def atomic_save(image: Image.Image, path: str | Path, **kwargs) -> Path:
    """Save a PIL image crash-safely (temporary file, fsync, rename: :func:`medgen.fileio.atomic_write`)."""
    path = Path(path)
    fmt = kwargs.pop("format", path.suffix.lstrip(".").upper() or "PNG")
    with atomic_write(path) as f:
        image.save(f, format=fmt, **kwargs)
    return path


def save_png(image: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """One synthetic image in [-1, 1] as an 8-bit PNG, marked as synthetic (:mod:`medgen.data.provenance`)."""
    from medgen.data.provenance import synthetic_png_info

    return atomic_save(Image.fromarray(to_uint8(image)), path, format="PNG", pnginfo=synthetic_png_info())


def make_grid(images: Sequence[torch.Tensor] | torch.Tensor, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images in [-1, 1] into one uint8 array (grey or RGB)."""
    tiles = [to_uint8(im) for im in images]
    if not tiles:
        raise ValueError("make_grid needs at least one image")
    ncols = ncols or math.ceil(math.sqrt(len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    h, w = tiles[0].shape[:2]
    shape = (nrows * (h + pad) + pad, ncols * (w + pad) + pad) + tiles[0].shape[2:]
    grid = np.full(shape, 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tile
    return grid


def save_class_grid(rows: dict[str, Sequence[torch.Tensor]], path: str | Path, pad: int = 2) -> Path:
    """One row of images per class, each row labelled with its class name; an RGB PNG when the images have 3
    channels, grey otherwise."""
    names = list(rows)
    ncols = max(len(v) for v in rows.values())
    label_w = 8 + 7 * max(len(n) for n in names)
    row_images = [make_grid(list(rows[n]) + [torch.ones_like(rows[n][0])] * (ncols - len(rows[n])), ncols, pad)
                  for n in names]
    h = row_images[0].shape[0]
    colour = any(row.ndim == 3 for row in row_images)
    canvas = Image.new("RGB" if colour else "L", (label_w + row_images[0].shape[1], h * len(names)),
                       (255, 255, 255) if colour else 255)
    draw = ImageDraw.Draw(canvas)
    for i, (name, row) in enumerate(zip(names, row_images)):
        canvas.paste(Image.fromarray(row).convert(canvas.mode), (label_w, i * h))
        draw.text((4, i * h + h // 2 - 5), name, fill=(0, 0, 0) if colour else 0)
    return atomic_save(canvas, path, format="PNG")
