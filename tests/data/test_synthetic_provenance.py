"""Synthetic images are never indexed as real training data.

medgen's samples and every export format carry a synthetic mark, and a real data set indexed by `medgen data index`
(and `medgen train --dataset-dir`) leaves out whatever carries one, or sits in a samples or export folder: images
sent to a PACS, exported or copied beside real ones do not come back as real training images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from medgen.cli import main as medgen_main
from medgen.data.datalist import DatalistError, build_datalist, resolve_datalist, write_datalist
from medgen.data.provenance import TRAINED_ALGORITHMIC_MEDIA, synthetic_reason
from medgen.diffusion.pipeline import DiffusionPipeline
from medgen.diffusion.sample_run import SampleRunner
from medgen.export.dicom_writer import export_images
from medgen.networks import ConditionalDiffusionUNet

CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A samples folder made by medgen's sampler (a tiny network) and its exports in every format."""
    root = tmp_path_factory.mktemp("synthetic")
    torch.manual_seed(0)
    net = ConditionalDiffusionUNet(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                   num_head_channels=8, norm_num_groups=8)
    pipeline = DiffusionPipeline(net, DDPMScheduler(num_train_timesteps=1000), CLASSES, image_size=16,
                                 precision="fp32", batch_size=2)
    samples = root / "samples"
    SampleRunner(pipeline, samples, per_class=1, num_inference_steps=2).run()
    folders = {"samples": samples}
    for fmt in ("png", "png16", "dicom", "nifti"):
        folders[fmt] = root / f"export_{fmt}"
        export_images(samples, folders[fmt], fmt=fmt)
    return folders


def real_folder(kermany: Path, dest: Path, per_class: int = 6) -> list[str]:
    for name in CLASSES:
        (dest / name).mkdir(parents=True)
        for f in sorted((kermany / "train" / name).glob("*.jpeg"))[:per_class]:
            shutil.copy(f, dest / name / f.name)
    return sorted(str(p.resolve()) for p in dest.rglob("*.jpeg"))


def test_synthetic_files_copied_into_a_real_data_set_are_left_out(tmp_path: Path, kermany: Path,
                                                                  synthetic: dict[str, Path]) -> None:
    data = tmp_path / "data"
    real = real_folder(kermany, data)
    copies = {  # what a user might gather back: a sample, each export format, another generator's marked PNG
        "NORMAL/sample.png": synthetic["samples"] / "NORMAL" / "000000.png",
        "NORMAL/export.png": synthetic["png"] / "NORMAL" / "000000.png",
        "PNEUMONIA/export16.png": synthetic["png16"] / "PNEUMONIA" / "000001.png",
        "PNEUMONIA/export.dcm": synthetic["dicom"] / "PNEUMONIA" / "000001.dcm",
        "NORMAL/export.nii.gz": synthetic["nifti"] / "NORMAL" / "000000.nii.gz",
    }
    for rel, src in copies.items():
        shutil.copy(src, data / rel)
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", f'<x:xmpmeta><rdf:Description DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"'
                                       "/></x:xmpmeta>")
    pixels = Image.open(sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0]).convert("L")
    pixels.save(data / "NORMAL" / "other_generator.png", pnginfo=info)
    described = PngInfo()
    described.add_text("Description", "chest x-ray, PA")  # a real PNG with a description of its own stays
    pixels.save(data / "NORMAL" / "real.png", pnginfo=described)

    datalist, summary = build_datalist(data, val_fraction=0.0, test_fraction=0.0)
    assert sorted(it["image"] for it in datalist["training"]) == sorted(real + [str((data / "NORMAL" /
                                                                                     "real.png").resolve())])
    assert summary.skipped == {"synthetic image (PNG marked by medgen)": 3,
                               "synthetic image (DICOM SyntheticData YES)": 1,
                               "synthetic image (NIfTI marked by medgen)": 1,
                               "synthetic image (PNG marked trainedAlgorithmicMedia)": 1}
    assert synthetic_reason(data / "NORMAL" / "real.png") is None
    pbc = kermany.parent / "blood_cells_pbc"  # a data set's own manifest.csv (path,label,...) is no export's
    assert (pbc / "manifest.csv").is_file()
    assert synthetic_reason(sorted((pbc / "neutrophil").glob("*.jpg"))[0]) is None

    # a classifier's real + synthetic training set asks for them: kept, each marked; a bundle refuses to train on it
    mixed, summary = build_datalist(data, val_fraction=0.0, test_fraction=0.0, include_synthetic=True)
    marked = sorted(Path(it["image"]).name for it in mixed["training"] if it.get("synthetic"))
    assert marked == ["export.dcm", "export.nii.gz", "export.png", "export16.png", "other_generator.png",
                      "sample.png"]
    assert len(mixed["training"]) == len(datalist["training"]) + 6 and not summary.skipped
    path = write_datalist(mixed, tmp_path / "mixed.json")
    with pytest.raises(DatalistError, match=r"holds 6 synthetic image\(s\) .*: a generative model trains on real "
                                            r"images only"):
        resolve_datalist(path)
    for item in mixed["training"]:  # the same datalist written by hand, without the marks
        item.pop("synthetic", None)
    path = write_datalist(mixed, tmp_path / "by_hand.json")
    with pytest.raises(DatalistError, match=r"by_hand.json names .*, a synthetic image \(.*\): a generative model"):
        resolve_datalist(path)
    assert resolve_datalist(write_datalist(datalist, tmp_path / "real.json"))["training"] == datalist["training"]


def test_a_samples_or_export_folder_is_no_data_set(tmp_path: Path, synthetic: dict[str, Path],
                                                   capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DatalistError, match=r"class 'NORMAL' has no readable images under .*samples \(skipped: .*"
                                            r"synthetic image \(in a medgen samples folder\)\)"):
        build_datalist(synthetic["samples"])
    unmarked = tmp_path / "older_export"  # PNGs written before they carried a mark: the export's manifest tells
    shutil.copytree(synthetic["png"], unmarked)
    for png in unmarked.rglob("*.png"):
        Image.open(png).save(png)  # the same pixels, no text chunks
        assert synthetic_reason(png) == "synthetic image (in a medgen export folder)"
    out = tmp_path / "datalist.json"
    assert medgen_main(["data", "index", str(synthetic["dicom"]), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"medgen: error: no usable image in the DICOM tree {synthetic['dicom']} (skipped: 1 DICOM not dicom, "
        "2 synthetic image (in a medgen export folder))")
    assert not out.exists()
    moved = tmp_path / "pacs_pull"  # the same DICOM files pulled back from a PACS, no manifest beside them
    for dcm in synthetic["dicom"].rglob("*.dcm"):
        (moved / dcm.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(dcm, moved / dcm.parent.name / dcm.name)
    with pytest.raises(DatalistError, match=r"skipped: 2 synthetic image \(DICOM SyntheticData YES\)"):
        build_datalist(moved)


def test_the_model_zoo_forms_training_list_leaves_synthetic_images_out(tmp_path: Path, kermany: Path,
                                                                         synthetic: dict[str, Path],
                                                                         capsys: pytest.CaptureFixture) -> None:
    """The exported bundle's own lister (``scripts/data.py``, no medgen there) keeps the guarantee."""
    from medgen.zoo_scripts.data import folder_datalist

    data = tmp_path / "data"
    real = real_folder(kermany, data)
    shutil.copy(synthetic["samples"] / "NORMAL" / "000000.png", data / "NORMAL" / "sample.png")
    shutil.copy(synthetic["png"] / "PNEUMONIA" / "000001.png", data / "PNEUMONIA" / "export.png")
    items = folder_datalist(str(data), CLASSES)
    assert sorted(str(Path(it["image"]).resolve()) for it in items) == real
    assert capsys.readouterr().out.startswith("left out 2 synthetic image(s)")
    with pytest.raises(ValueError, match="is a samples folder"):
        folder_datalist(str(synthetic["samples"]), CLASSES)
