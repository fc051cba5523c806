"""Sharded generation: n shards written to n folders together make exactly the unsharded job, image for image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from medgen.cli import main as medgen_main
from medgen.diffusion.pipeline import DiffusionPipeline
from medgen.diffusion.sample_run import SampleRunner
from medgen.networks import ConditionalDiffusionUNet

CLASSES = ["NORMAL", "PNEUMONIA"]


def tiny_pipeline(batch_size: int) -> DiffusionPipeline:
    torch.manual_seed(0)
    net = ConditionalDiffusionUNet(
        channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=8
    )
    return DiffusionPipeline(
        net, DDPMScheduler(num_train_timesteps=1000), CLASSES, image_size=16, precision="fp32", batch_size=batch_size
    )


def records(folder: Path) -> dict[tuple[int, int], dict]:
    lines = (folder / "samples.jsonl").read_text().splitlines()
    out = {}
    for line in lines:
        rec = json.loads(line)
        key = (rec["label"], rec["seed"])
        assert key not in out, f"seed {key} written twice in {folder}"
        out[key] = rec
    return out


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_two_shards_merge_into_the_unsharded_job(tmp_path: Path, sampler: str) -> None:
    settings = {"per_class": 5, "seed": 100, "sampler": sampler, "num_inference_steps": 3, "save_npy": True}
    SampleRunner(tiny_pipeline(4), tmp_path / "whole", **settings).run()
    for i in range(2):
        SampleRunner(tiny_pipeline(3), tmp_path / f"shard{i}", shard=f"{i}/2", **settings).run()

    whole = records(tmp_path / "whole")
    shards = [records(tmp_path / f"shard{i}") for i in range(2)]
    assert not set(shards[0]) & set(shards[1]), "a seed was made by both shards"
    assert set(shards[0]) | set(shards[1]) == set(whole)
    assert len(whole) == 10 and len({seed for _, seed in whole}) == 10
    for shard, part in enumerate(shards):
        for key, rec in part.items():
            mine = np.load(tmp_path / f"shard{shard}" / Path(rec["file"]).with_suffix(".npy"))
            reference = np.load(tmp_path / "whole" / Path(whole[key]["file"]).with_suffix(".npy"))
            np.testing.assert_allclose(mine, reference, atol=1e-5)


def test_a_rerun_of_a_shard_makes_nothing_twice(tmp_path: Path) -> None:
    runner = SampleRunner(tiny_pipeline(2), tmp_path, per_class=2, seed=0, num_inference_steps=2, shard="1/2")
    runner.run()
    runner.run()
    assert len(records(tmp_path)) == 2


@pytest.mark.slow
def test_medgen_sample_shard_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``medgen sample --shard i/n`` through the bundle's inference.yaml, with random weights at 32x32."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    torch.manual_seed(0)
    net = ConditionalDiffusionUNet(num_classes=2)  # the bundle's network_def
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    common = [
        "sample",
        "cxr_ddpm",
        "--ckpt",
        str(ckpt),
        "--per-class",
        "2",
        "--steps",
        "2",
        "--sampler",
        "dpmpp2m",
        "--batch-size",
        "2",
        "--image_size",
        "32",
        "--precision",
        "fp32",
    ]
    assert medgen_main([*common, "--out", str(tmp_path / "whole")]) == 0
    for i in range(2):
        assert medgen_main([*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    whole = records(tmp_path / "whole")
    parts = [records(tmp_path / f"s{i}") for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2
    assert set(parts[0]) | set(parts[1]) == set(whole) and not set(parts[0]) & set(parts[1])
    for i, part in enumerate(parts):
        for key, rec in part.items():
            np.testing.assert_allclose(
                np.load(tmp_path / f"s{i}" / Path(rec["file"]).with_suffix(".npy")),
                np.load(tmp_path / "whole" / Path(whole[key]["file"]).with_suffix(".npy")),
                atol=1e-5,
            )


def test_gated_shards_never_share_a_seed_and_a_rerun_counts_by_class() -> None:
    """Through a quality gate kept images replace rejected ones with fresh seeds: each shard draws them from its own
    residue, and a rerun makes what each class still lacks, past every seed the shard kept."""
    from medgen.diffusion.sample_run import gated_todo, plan_seeds

    plans = [plan_seeds(CLASSES, None, 3, 100, (i, 2)) for i in range(2)]
    first = [gated_todo(plan, set(), 100, (i, 2)) for i, plan in enumerate(plans)]
    for i, todo in enumerate(first):
        assert sorted(label for label, _ in todo) == sorted(label for label, _ in plans[i])
        assert [seed for _, seed in todo] == [100 + i + 2 * j for j in range(len(todo))]
    assert not {s for _, s in first[0]} & {s for _, s in first[1]}

    # shard 0's plan is two class-0 images and one class-1 image; it kept one of each, its class-1 image on a
    # replacement seed, before it stopped; shard 1 finished
    assert sorted(plans[0]) == [(0, 100), (0, 102), (1, 104)]
    done = {(0, 100), (1, 110)} | set(first[1])
    assert gated_todo(plans[1], done, 100, (1, 2)) == []
    assert gated_todo(plans[0], done, 100, (0, 2)) == [(0, 112)]
    # a job with a later --seed adds its own images, as without a gate
    assert gated_todo(plan_seeds(CLASSES, None, 1, 500), {(0, 100), (1, 110)}, 500) == [(0, 500), (1, 501)]
    # unsharded: the first run is the plan's own seeds in order, as plain sampling makes them
    whole = plan_seeds(CLASSES, None, 2, 7)
    assert gated_todo(whole, set(), 7) == whole


def test_gate_retries_step_through_a_shards_seeds() -> None:
    from medgen.metrics.quality_gate import QualityGate, generate_until_pass

    gate = QualityGate(k=1, percentile=100).fit(np.zeros((3, 1), np.float32), np.zeros((1, 1), np.float32))

    def generate(labels, seeds):  # an image per seed: black passes, seeds 1 mod 4 come out white and fail
        return torch.stack([torch.full((1, 4, 4), 1.0 if s % 4 == 1 else -1.0) for s in seeds])

    out = generate_until_pass(generate, [0, 1, 0], gate, lambda x: x.mean(axis=(1, 2, 3))[:, None], first_seed=1,
                              seed_step=2)
    # seeds 1, 3, 5 first; 1 and 5 fail and are retried on 7 and 9; 9 fails again and 11 passes
    assert out["seeds"] == [7, 3, 11] and out["rejection_rate"] == 3 / 6


def test_a_folder_sampled_with_another_per_class_is_refused_not_overfilled(tmp_path: Path) -> None:
    """Seeds run seed + class index x per_class + i: more images per class into the same folder would make each class's
    new planned seeds besides the old ones (3 + 4 where 3 + 3 were asked), so it stops before any work; a later
    --seed adds images."""
    settings = {"seed": 0, "num_inference_steps": 2, "save_npy": False}
    SampleRunner(tiny_pipeline(4), tmp_path, per_class=2, **settings).run()
    with pytest.raises(ValueError) as err:
        SampleRunner(tiny_pipeline(4), tmp_path, per_class=3, **settings).run()
    assert str(err.value) == (
        f"{tmp_path} holds PNEUMONIA seed 2, which this job numbers as a NORMAL image: the folder was sampled with "
        "another --per-class or --class (seeds run seed + class index x per-class + i); give the ones it was made "
        "with, add images with --seed 4 or more, or write to another folder (--out DIR, --output_dir DIR)")
    assert len(records(tmp_path)) == 4
    SampleRunner(tiny_pipeline(4), tmp_path, per_class=2, **settings).run()  # the same job again: nothing to make
    assert len(records(tmp_path)) == 4
    SampleRunner(tiny_pipeline(4), tmp_path, per_class=1, **{**settings, "seed": 4}).run()
    made = records(tmp_path)
    assert sorted(label for label, _ in made) == [0, 0, 0, 1, 1, 1]
    # one class at a time (as the quality protocol samples) numbers each class from its own seed: no refusal
    SampleRunner(tiny_pipeline(4), tmp_path / "one", per_class=2, class_names=["PNEUMONIA"], **settings).run()
    SampleRunner(tiny_pipeline(4), tmp_path / "one", per_class=3, class_names=["NORMAL"], **settings).run()
    assert sorted(records(tmp_path / "one")) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_a_folder_of_files_no_sampling_job_wrote_is_refused_before_any_work(tmp_path: Path, kermany: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """``--out`` pointed at a data set (class folders of real images) would put synthetic images among the real ones,
    where the next training reads them as real: it stops in one line and writes nothing. A samples folder with a file
    copied into a class folder stops too; one with an image of a job cut short before its record, or with the
    bundle's export folder, goes on."""
    real = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0]
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    (data / "NORMAL" / real.name).write_bytes(real.read_bytes())
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    with pytest.raises(ValueError) as err:
        SampleRunner(tiny_pipeline(2), data, per_class=1, num_inference_steps=2).run()
    assert str(err.value) == (
        f"{data} is no samples folder (no samples.jsonl) and holds NORMAL/{real.name}: the synthetic images would be "
        "mixed with files no sampling job wrote; write to another folder (--out DIR, --output_dir DIR)")
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before  # not even a lock file left

    repo = Path(__file__).resolve().parents[2]  # as a user meets it: `medgen sample --out <the data set>`
    monkeypatch.chdir(repo)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(ConditionalDiffusionUNet(num_classes=2).state_dict(), ckpt)
    assert medgen_main(["sample", "cxr_ddpm", "--ckpt", str(ckpt), "--per-class", "1", "--steps", "2", "--image_size",
                        "32", "--out", str(data)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"medgen: error: {err.value}"
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before

    samples = tmp_path / "samples"
    settings = {"per_class": 2, "seed": 0, "num_inference_steps": 2}
    SampleRunner(tiny_pipeline(2), samples, **settings).run()
    lines = (samples / "samples.jsonl").read_text().splitlines()
    (samples / "samples.jsonl").write_text("".join(f"{x}\n" for x in lines if '"seed": 3,' not in x))  # a job cut
    # short after writing PNEUMONIA/000003.png, before its record
    (samples / "export_dicom").mkdir()  # what the bundle's export step writes into its samples folder
    (samples / "export_dicom" / "000000.dcm").write_bytes(b"DICM")
    SampleRunner(tiny_pipeline(2), samples, **settings).run()  # makes seed 3 again
    assert len(records(samples)) == 4 and (samples / "PNEUMONIA" / "000003.png").is_file()
    (samples / "PNEUMONIA" / real.name).write_bytes(real.read_bytes())
    with pytest.raises(ValueError, match=rf"^{samples} holds PNEUMONIA/{real.name}, which its samples.jsonl does not "
                                         "name: the synthetic images would be mixed"):
        SampleRunner(tiny_pipeline(2), samples, **{**settings, "seed": 100}).run()


def test_an_image_deleted_and_made_again_is_read_once(tmp_path: Path) -> None:
    """A reviewer deletes an implausible image; the next run into the folder makes that seed again, and its second
    record is the one every reader takes: evaluation, the grids and export see each image once."""
    from medgen.export.dicom_writer import export_images
    from medgen.metrics.image_sets import ImageSetError, load_samples_dir
    from medgen.metrics.judge import read_sample_records

    samples = tmp_path / "samples"
    settings = {"per_class": 2, "seed": 0, "num_inference_steps": 2}
    SampleRunner(tiny_pipeline(2), samples, **settings).run()
    (samples / "NORMAL" / "000001.png").unlink()
    (samples / "NORMAL" / "000001.npy").unlink()
    SampleRunner(tiny_pipeline(2), samples, **settings).run()
    lines = [json.loads(x) for x in (samples / "samples.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines].count("NORMAL/000001.png") == 2 and len(lines) == 5  # appended, never rewritten
    loaded = load_samples_dir(samples, size=16)
    assert len(loaded) == 4 and [r["file"] for r in loaded.records] == [x["file"] for x in lines[:4]]
    assert loaded.records[1] == lines[4]  # the later record, in the file's first place
    assert len(read_sample_records(samples)) == 4
    with open(samples / "samples.jsonl", "a") as f:
        f.write('{"file": ["NORMAL/000001.png"], "class": "NORMAL"}\n')  # a bad line is reported, the rest go on
    done = export_images(samples, tmp_path / "png", fmt="png")
    assert done["written"] == 4 and [number for number, _ in done["errors"]] == [6]
    rows = (tmp_path / "png" / "manifest.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and [row.split(",")[2] for row in rows if ",NORMAL/000001.png," in row] == ["5"]  # line 5
    with open(samples / "samples.jsonl", "a") as f:
        f.write('{"file": "NORMAL/0000')  # a line cut short (a full disk): evaluation names it, not a bare parse error
    with pytest.raises(ImageSetError, match=rf"^{samples / 'samples.jsonl'} line 7: not JSON \(Unterminated string"):
        load_samples_dir(samples, size=16)


def test_an_exported_bundles_sampling_never_mixes_its_folder(tmp_path: Path, kermany: Path) -> None:
    """The Model Zoo form's own sampling (``scripts/sampling.py``, no medgen there): a folder with files it did not
    write, or made with other settings, stops in one line before any work; a second run with the same settings adds
    its images, and ``samples.jsonl`` names both runs' (it used to name the last run's only)."""
    from medgen.zoo_scripts.sampling import write_samples

    real = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[0]
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    (data / "NORMAL" / real.name).write_bytes(real.read_bytes())
    with pytest.raises(SystemExit) as stop:
        write_samples(tiny_pipeline(2), str(data), per_class=1, num_inference_steps=2)
    assert stop.value.code == (f"error: {data} holds NORMAL/{real.name}, which no run of this bundle's sampling "
                               "wrote: the synthetic images would be mixed with it; give another --output_dir")
    assert [p.name for p in data.rglob("*")] == ["NORMAL", real.name]

    samples = tmp_path / "samples"
    write_samples(tiny_pipeline(2), str(samples), per_class=1, num_inference_steps=2)
    write_samples(tiny_pipeline(2), str(samples), per_class=2, seed=0, num_inference_steps=2)  # seed 0 again, 1 new
    lines = [json.loads(x) for x in (samples / "samples.jsonl").read_text().splitlines()]
    assert sorted((x["class"], x["seed"]) for x in lines) == [(c, s) for c in CLASSES for s in (0, 1)]
    assert all((samples / x["image"]).is_file() for x in lines)
    before = (samples / "samples.jsonl").read_bytes()
    with pytest.raises(SystemExit) as stop:
        write_samples(tiny_pipeline(2), str(samples), per_class=1, seed=5, num_inference_steps=3)
    assert stop.value.code.startswith(f"error: {samples / 'samples.jsonl'}: NORMAL/000000.png was made with "
                                      "{'steps': 2}, these would be made with {'steps': 3}")
    (samples / "PNEUMONIA" / "000009.png").write_bytes((samples / "PNEUMONIA" / "000001.png").read_bytes())  # a
    (samples / "PNEUMONIA" / real.name).write_bytes(real.read_bytes())  # killed run's image is kept; a real one not
    with pytest.raises(SystemExit, match=f"holds PNEUMONIA/{real.name}, which no run"):
        write_samples(tiny_pipeline(2), str(samples), per_class=1, seed=5, num_inference_steps=2)
    assert (samples / "samples.jsonl").read_bytes() == before and not (samples / "NORMAL" / "000005.png").exists()
