"""The main job, end to end on real chest X-rays: train briefly, sample per class, evaluate, write a report.

    python -m medgen.demo --out runs/demo     (data: $MEDGEN_DATA_DIR/chest_xray_kermany_224)

Each step is the same bundle run or command a user would call on its own; this module only chains them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from medgen.bundles import find_bundle, run_bundle
from medgen.config import DATA_HINT

logger = logging.getLogger("medgen.demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--data-dir", default=os.environ.get("MEDGEN_DATA_DIR", "data"),
                        help="folder holding chest_xray_kermany_224/ (default: $MEDGEN_DATA_DIR or ./data)")
    parser.add_argument("--images-per-class", type=int, default=150, help="training images per class")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples-per-class", type=int, default=16)
    parser.add_argument("--sampler", default="dpmpp2m", help="dpmpp2m (DPM-Solver++ 2M) or ddim")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the sampler's, 15 for dpmpp2m)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation and report")
    parser.add_argument("--from-scratch", action="store_true",
                        help="do not fine-tune the bundle's shipped weights; train a new network")
    args = parser.parse_args(argv)
    from medgen.diffusion.solvers import DEFAULT_STEPS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")

    data = Path(args.data_dir) / "chest_xray_kermany_224"
    if not data.is_dir():
        print(f"medgen: error: the Kermany chest X-ray set is not at {data}; {DATA_HINT}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    timings = {}

    shipped = find_bundle("cxr_ddpm") / "models" / "model.pt"
    init = None if args.from_scratch or not shipped.is_file() else shipped
    print(f"training: {'fine-tuning the shipped weights ' + str(init) if init else 'a new network from scratch'}")
    start = time.time()
    from medgen.diffusion.sample_run import objective_of

    run_bundle("cxr_ddpm", "train", "training", {
        **(objective_of(init) if init else {}),  # a fine-tune keeps the objective the shipped weights learned
        "dataset_dir": str(data), "output_dir": str(out / "train"), "model_path": str(out / "model.pt"),
        "max_items_per_class": args.images_per_class, "max_epochs": args.epochs, "resume": False,
        "checkpoint_interval": args.epochs, "sample_interval": max(1, args.epochs // 2),
        "init_weights": str(init) if init else None, "learning_rate": 5e-5 if init else 2e-4,
    })
    timings["train_s"] = round(time.time() - start, 1)

    start = time.time()
    run_bundle("cxr_ddpm", "inference", "inference", {
        "ckpt_path": str(out / "model.pt"), "output_dir": str(out / "samples"),
        "per_class": args.samples_per_class, "sampler": args.sampler,
        "num_inference_steps": args.steps or DEFAULT_STEPS.get(args.sampler, 50),
    })
    timings["sample_s"] = round(time.time() - start, 1)

    report = None
    if not args.no_eval:
        from medgen.metrics.commands import evaluate_command

        start = time.time()
        evaluate_command(str(out / "samples"), str(out / "train" / "datalist.json"), str(out / "eval"),
                         size=64, max_real_per_class=100)
        timings["evaluate_s"] = round(time.time() - start, 1)
        report = out / "eval" / "report.html"

    losses = [json.loads(x)["loss"] for x in (out / "train" / "loss.jsonl").read_text().splitlines()]
    grids = sorted((out / "train" / "grids").glob("*.png"))
    print("\n== medgen demo ==")
    print(f"training loss: first epoch {losses[0]:.4f}, last epoch {losses[-1]:.4f} ({len(losses)} epochs)")
    print(f"weights:       {out / 'model.pt'}")
    print(f"training grid: {grids[-1] if grids else 'none'}")
    print(f"samples:       {out / 'samples'} (grid_NORMAL.png, grid_PNEUMONIA.png, samples.jsonl)")
    if report is not None:
        print(f"report:        {report}")
    print(f"timings:       {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
