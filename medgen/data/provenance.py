"""Synthetic images say so, and are never indexed as real training data.

medgen's DICOM carries ``SyntheticData`` (0008,001C) = YES and its NIfTI the ``descrip`` ``synthetic image (medgen)``.
Its PNGs carry the same words as a ``Description`` text chunk and, in an XMP packet, the IPTC digital source type
``trainedAlgorithmicMedia``: the field photo tools and content-credential readers use for generated images (PNG has
no field of its own for it). :func:`synthetic_reason` reads these marks, and a medgen samples or export folder, so
that ``medgen data index`` and ``medgen train --dataset-dir`` leave synthetic images out of a real data set: images
sent to a PACS, exported, or copied next to real ones do not come back as real training images.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the words every synthetic file medgen writes carries (PNG ``Description``, NIfTI ``descrip``)
SYNTHETIC_DESCRIPTION = "synthetic image (medgen)"
#: IPTC NewsCodes digital source type of an image made by a trained model
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_KEY = "XML:com.adobe.xmp"
XMP_PACKET = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    f'Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"/></rdf:RDF></x:xmpmeta>'
)
#: the first columns of the manifest.csv ``medgen export`` writes beside its files
EXPORT_MANIFEST_HEADER = "file,source,line,format,"


def synthetic_png_info():
    """PNG text chunks that mark an image as synthetic (Pillow ``pnginfo=``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Description", SYNTHETIC_DESCRIPTION)
    info.add_itxt(XMP_KEY, XMP_PACKET)
    return info


def _medgen_output_folder(folder: str) -> str | None:
    """What marks ``folder`` as one medgen wrote synthetic images into, if anything."""
    if os.path.isfile(os.path.join(folder, "samples.jsonl")):
        return "in a medgen samples folder"
    manifest = os.path.join(folder, "manifest.csv")
    try:
        with open(manifest, encoding="utf-8", errors="replace") as f:
            if f.readline().startswith(EXPORT_MANIFEST_HEADER):
                return "in a medgen export folder"
    except OSError:
        pass
    return None


def _png_mark(path: str) -> str | None:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the header only: nothing decoded
            with Image.open(path) as image:
                info = image.info
    except Exception:  # an unreadable file is the image check's to report
        return None
    if str(info.get("Description", "")).startswith(SYNTHETIC_DESCRIPTION):
        return "PNG marked by medgen"
    if "trainedAlgorithmicMedia" in str(info.get(XMP_KEY, "")):
        return "PNG marked trainedAlgorithmicMedia"
    return None


def _dicom_mark(path: str) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SyntheticData"])
    except Exception:  # not DICOM, or unreadable: the image check's to report
        return None
    return "DICOM SyntheticData YES" if str(ds.get("SyntheticData", "")).strip().upper() == "YES" else None


def _nifti_mark(path: str) -> str | None:
    import nibabel as nib

    try:
        descrip = bytes(nib.load(path).header["descrip"].item())
    except Exception:
        return None
    return "NIfTI marked by medgen" if descrip.startswith(SYNTHETIC_DESCRIPTION.encode()) else None


def synthetic_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` is a synthetic image (``synthetic image (DICOM SyntheticData YES)``, ...), or None: a mark in the
    file (PNG, DICOM, NIfTI), or a place in a medgen samples or export folder (``<folder>/<class>/<file>``)."""
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        where = _medgen_output_folder(str(folder))
        if where:
            return f"synthetic image ({where})"
    name = path.name.lower()
    if name.endswith(".png"):
        mark = _png_mark(str(path))
    elif name.endswith((".nii", ".nii.gz")):
        mark = _nifti_mark(str(path))
    elif name.endswith((".dcm", ".dicom")) or "." not in name:
        mark = _dicom_mark(str(path))
    else:
        mark = None
    return f"synthetic image ({mark})" if mark else None
