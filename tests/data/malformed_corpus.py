"""Build a corpus of malformed and unusual image files, mixed with real chest X-rays, in a class-folder tree.

Every file's name starts with its kind (``<kind>_<n>.<ext>``); ``EXPECTED`` says, per kind, whether the file is
kept (and must load to a finite, non-constant image) or the reason it is skipped for.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from synthetic_dicom import dicom_file  # noqa: F401  (re-exported: the corpus and its tests build DICOMs with it)

CLASSES = ("NORMAL", "PNEUMONIA")
KEEP = None
#: kind -> None (kept, loads correctly) or the skip reason that index time reports.
EXPECTED: dict[str, str | None] = {
    "real": KEEP, "palette": KEEP, "grey16": KEEP, "tiff16": KEEP, "greyalpha": KEEP, "rgba": KEEP, "cmyk": KEEP,
    "exif": KEEP, "wide": KEEP, "tall": KEEP, "pngasjpg": KEEP, "jpgaspng": KEEP, "floattiff": KEEP,
    "floatnpy": KEEP, "dicom": KEEP, "dicommono1": KEEP, "dicomaspng": KEEP, "nifti": KEEP,
    "truncjpeg": "truncated image", "truncpng": "truncated image", "corruptjpeg": "unreadable image",
    "corruptpng": "unreadable image", "zerobyte": "empty file", "textaspng": "unreadable image",
    "nantiff": "non-finite values", "inftiff": "non-finite values", "nannpy": "non-finite values",
    "infnpy": "non-finite values", "constpng": "constant image", "constjpeg": "constant image",
    "constnpy": "constant image", "bomb": "oversized image", "bigpng": "oversized image", "tiny": "too small",
    "dicomslopenan": "DICOM bad rescale", "dicomslopezero": "DICOM bad rescale",
    "dicomnopixels": "DICOM no pixel data", "dicomtrunc": "DICOM truncated", "niftinan": "non-finite values",
    "nifti4d": "unsupported shape", "niftitrunc": "unreadable NIfTI", "constnifti": "constant image",
    "notes": "not an image (.txt)",
}


def _chest(rng: np.random.Generator, size: tuple[int, int] = (96, 96)) -> np.ndarray:
    """A chest-like grey picture: bright body with two dark lungs and noise (uint8)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    body = 170 + 40 * np.exp(-(((xx - w / 2) / (0.45 * w)) ** 2))
    lungs = np.exp(-(((xx - 0.3 * w) / (0.12 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2))
    lungs += np.exp(-(((xx - 0.7 * w) / (0.12 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2))
    image = body - 120 * lungs + rng.normal(0, 6, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A ``side`` x ``side`` all-black grey PNG, written row by row (small on disk, huge when decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _save(image: Image.Image, path: Path, **kw) -> None:
    image.save(path, **kw)


def build_corpus(root: Path, real_dir: Path | None, real_per_class: int = 30, seed: int = 0) -> dict[str, int]:
    """Write the corpus under ``root/<class>/``; returns the number of files per kind."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    n_of: dict[str, int] = {}
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)

    def out(kind: str, ext: str) -> Path:
        n = n_of[kind] = n_of.get(kind, 0) + 1
        counts[kind] = n
        return root / CLASSES[n % 2] / f"{kind}_{n:03d}{ext}"

    if real_dir is not None:
        for c in CLASSES:
            for src in sorted((real_dir / "train" / c).glob("*.jpeg"))[:real_per_class]:
                n = n_of["real"] = n_of.get("real", 0) + 1
                counts["real"] = n
                (root / c / f"real_{n:03d}.jpeg").symlink_to(src)

    def many(kind: str, n: int, ext: str, write) -> None:
        for _ in range(n):
            write(out(kind, ext))

    chest = lambda size=(96, 96): _chest(rng, size)  # noqa: E731
    many("palette", 10, ".png", lambda p: _save(Image.fromarray(chest()).convert("RGB").quantize(64), p))
    many("grey16", 10, ".png", lambda p: _save(Image.fromarray(chest().astype(np.uint16) * 16), p))
    many("tiff16", 5, ".tif", lambda p: _save(Image.fromarray(chest().astype(np.uint16) * 200), p))
    many("greyalpha", 10, ".png", lambda p: _save(
        Image.merge("LA", [Image.fromarray(chest()), Image.fromarray(np.full((96, 96), 200, np.uint8))]), p))
    many("rgba", 10, ".png", lambda p: _save(Image.fromarray(chest()).convert("RGBA"), p))
    many("cmyk", 10, ".jpg", lambda p: _save(Image.fromarray(chest()).convert("CMYK"), p, quality=90))

    def exif(p: Path) -> None:
        image = Image.fromarray(chest((80, 120)))
        ex = image.getexif()
        ex[0x0112] = 6  # rotate 90 degrees clockwise when displayed
        image.save(p, exif=ex, quality=90)

    many("exif", 10, ".jpg", exif)
    many("wide", 5, ".png", lambda p: _save(Image.fromarray(chest((60, 140))), p))
    many("tall", 5, ".png", lambda p: _save(Image.fromarray(chest((150, 70))), p))

    def png_bytes(array: np.ndarray, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt)
        return buf.getvalue()

    many("pngasjpg", 5, ".jpg", lambda p: p.write_bytes(png_bytes(chest(), "PNG")))
    many("jpgaspng", 5, ".png", lambda p: p.write_bytes(png_bytes(chest(), "JPEG")))
    many("floattiff", 5, ".tif", lambda p: _save(Image.fromarray(chest().astype(np.float32) / 300.0), p))
    many("floatnpy", 5, ".npy", lambda p: np.save(p, chest().astype(np.float32) * 3.5 - 100))

    def dicom_good(p: Path, photometric: str = "MONOCHROME2") -> None:
        dicom_file(p, chest().astype(np.uint16) * 16, photometric)

    many("dicom", 5, ".dcm", dicom_good)
    many("dicommono1", 5, ".dcm", lambda p: dicom_good(p, "MONOCHROME1"))
    many("dicomaspng", 3, ".png", dicom_good)

    def nifti(p: Path, volume: np.ndarray) -> None:
        nib.save(nib.Nifti1Image(volume, np.eye(4)), p)

    def good_volume() -> np.ndarray:
        volume = np.zeros((64, 72, 6), np.float32)
        for k in range(1, 5):
            volume[..., k] = chest((64, 72)).astype(np.float32) * 4.0
        return volume

    many("nifti", 4, ".nii.gz", lambda p: nifti(p, good_volume()))

    # ---- kinds that must be skipped --------------------------------------------------------------------
    jpeg = png_bytes(chest((200, 200)), "JPEG")
    png = png_bytes(chest((200, 200)), "PNG")
    many("truncjpeg", 20, ".jpeg", lambda p: p.write_bytes(jpeg[: len(jpeg) * 2 // 3]))
    many("truncpng", 15, ".png", lambda p: p.write_bytes(png[: len(png) * 2 // 3]))
    many("corruptjpeg", 10, ".jpeg", lambda p: p.write_bytes(jpeg[:2] + rng.bytes(300) + jpeg[302:]))
    many("corruptpng", 10, ".png", lambda p: p.write_bytes(png[:8] + rng.bytes(200) + png[208:]))
    for ext in (".jpeg", ".png", ".dcm", ".tif", ".nii.gz"):
        many("zerobyte", 2, ext, lambda p: p.write_bytes(b""))
    many("textaspng", 5, ".png", lambda p: p.write_text("this is not an image\n"))

    def float_tiff(p: Path, bad: float) -> None:
        array = chest().astype(np.float32)
        array[10:20, 10:20] = bad
        Image.fromarray(array).save(p)

    def float_npy(p: Path, bad: float) -> None:
        array = chest().astype(np.float32)
        array[5, 5] = bad
        np.save(p, array)

    many("nantiff", 8, ".tiff", lambda p: float_tiff(p, np.nan))
    many("inftiff", 7, ".tiff", lambda p: float_tiff(p, np.inf))
    many("nannpy", 8, ".npy", lambda p: float_npy(p, np.nan))
    many("infnpy", 7, ".npy", lambda p: float_npy(p, -np.inf))
    many("constpng", 10, ".png", lambda p: _save(Image.fromarray(np.full((64, 64), 117, np.uint8)), p))
    many("constjpeg", 5, ".jpeg", lambda p: _save(Image.fromarray(np.full((64, 64), 0, np.uint8)), p))
    many("constnpy", 5, ".npy", lambda p: np.save(p, np.full((64, 64), 3.0, np.float32)))
    bomb = out("bomb", ".png")
    bomb_png(bomb)
    shutil.copy(bomb, out("bomb", ".png"))
    many("bigpng", 1, ".png", lambda p: bomb_png(p, 10_000))
    many("tiny", 5, ".png", lambda p: _save(Image.fromarray(np.array([[200]], np.uint8)), p))
    many("tiny", 5, ".jpg", lambda p: _save(Image.fromarray(rng.integers(0, 255, (2, 3), dtype=np.uint8)), p))
    many("dicomslopenan", 5, ".dcm", lambda p: dicom_file(p, chest().astype(np.uint16), slope="NaN"))
    many("dicomslopezero", 5, ".dcm", lambda p: dicom_file(p, chest().astype(np.uint16), slope="0"))
    many("dicomnopixels", 5, ".dcm", lambda p: dicom_file(p, None))
    many("dicomtrunc", 5, ".dcm", lambda p: dicom_file(p, chest().astype(np.uint16), truncate=True))

    def nifti_nan(p: Path) -> None:
        volume = good_volume()
        volume[3, 3, 2] = np.nan
        nifti(p, volume)

    many("niftinan", 3, ".nii.gz", nifti_nan)
    many("nifti4d", 3, ".nii.gz", lambda p: nifti(p, np.stack([good_volume()] * 3, axis=-1)))

    def nifti_trunc(p: Path) -> None:
        nifti(p, good_volume())
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    many("niftitrunc", 3, ".nii.gz", nifti_trunc)
    many("constnifti", 2, ".nii.gz", lambda p: nifti(p, np.full((32, 32, 4), 5.0, np.float32)))
    many("notes", 3, ".txt", lambda p: p.write_text("acquisition notes\n"))
    return counts


def kind_of(path: str | Path) -> str:
    return Path(path).name.split("_")[0]
