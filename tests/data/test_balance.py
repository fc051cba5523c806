"""Class-balanced drawing (``class_balanced: true`` in the pixel bundles' train.yaml): a rare class is drawn as often as
a common one, in one process and as the bundles' data loaders build it from real images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medgen.data.balance import class_balanced_sampler, class_weights

REPO = Path(__file__).resolve().parents[2]


class _Items:
    def __init__(self, labels: list[int]) -> None:
        self.data = [{"image": f"{i}.png", "label": label} for i, label in enumerate(labels)]

    def __len__(self) -> int:
        return len(self.data)


def test_every_class_gets_the_same_total_weight():
    weights = class_weights([{"label": 0}] * 2 + [{"label": 1}] * 6 + [{"label": 2}] * 3)
    assert sum(weights[:2]) == pytest.approx(1) and sum(weights[2:8]) == pytest.approx(1)
    assert sum(weights[8:]) == pytest.approx(1)


def test_a_rare_class_is_drawn_about_as_often_as_a_common_one():
    dataset = _Items([0] * 10 + [1] * 90)
    sampler = class_balanced_sampler(dataset)
    torch.manual_seed(0)
    drawn = [dataset.data[i]["label"] for _ in range(50) for i in sampler]
    assert len(drawn) == 50 * 100  # an epoch is as long as the data set
    assert 0.46 < drawn.count(0) / len(drawn) < 0.54


def test_an_item_without_an_integer_label_is_named():
    with pytest.raises(ValueError, match="a.png: class-balanced sampling needs an integer 'label'.*None"):
        class_weights([{"label": 0}, {"image": "a.png"}])


@pytest.mark.parametrize("bundle, rare, common", [
    ("cxr_ddpm", "chest_xray_kermany_224/train/NORMAL", "chest_xray_kermany_224/train/PNEUMONIA"),
    ("brain_mri_score", "brain_tumor_mri_224/Training/notumor", "brain_tumor_mri_224/Training/glioma"),
    ("blood_cells_ddpm", "blood_cells_pbc/basophil", "blood_cells_pbc/neutrophil"),
])
def test_the_bundle_s_loader_draws_classes_evenly_only_when_asked(shared_data: Path, tmp_path: Path, bundle: str,
                                                                   rare: str, common: str):
    files = [sorted((shared_data / folder).glob("*.jp*g"))[:n] for folder, n in ((rare, 2), (common, 8))]
    items = [{"image": str(f), "label": label} for label, group in enumerate(files) for f in group]
    assert len(items) == 10
    share = {}
    for balanced in (False, True):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.yaml"))
        parser.update({"class_balanced": balanced, "image_size": 32, "num_workers": 0,
                       "output_dir": str(tmp_path / str(balanced)),
                       "datalist": {"classes": ["rare", "common"], "training": items}})
        loader = parser.get_parsed_content("train#dataloader")
        torch.manual_seed(0)
        drawn = [loader.dataset.data[i]["label"] for _ in range(200) for i in loader.sampler]
        share[balanced] = drawn.count(0) / len(drawn)
    assert share[False] == pytest.approx(0.2)  # shuffled epochs: each item once per epoch
    assert 0.45 < share[True] < 0.55
