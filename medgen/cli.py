"""The ``medgen`` command: one verb per stage, each a thin layer over a bundle config or a stage's function."""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import textwrap
from pathlib import Path

from medgen import __version__

logger = logging.getLogger("medgen")

EXIT_CODES = ("exit codes: 0 done; 1 the work failed (audit found a memorised image, drift detected, a file not "
              "exported or sent, a bundle check failed); 2 bad usage or input (unknown option, missing file or folder, "
              "bad config value)")


class OneSpellingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--a-b`` options also take ``--a_b`` (added by :func:`accept_underscores`), with
    abbreviations that see both spellings as one option. argparse has no hidden-alias option; this fills the gap."""

    def _get_option_tuples(self, option_string: str) -> list:
        unique: dict[int, tuple] = {}
        for match in super()._get_option_tuples(option_string):
            unique.setdefault(id(match[0]), match)
        return list(unique.values())


def _underscore_alias(option: str, options: list[str]) -> bool:
    """``--a_b`` beside its documented spelling ``--a-b``."""
    return option.startswith("--") and "_" in option and "--" + option[2:].replace("_", "-") in options


class _OneSpellingFormatter(argparse.HelpFormatter):
    """Help that shows only the documented (hyphenated) spelling of an option."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if not _underscore_alias(s, action.option_strings)]
        if len(shown) < len(action.option_strings):
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


def accept_underscores(parser: argparse.ArgumentParser) -> None:
    """Give every ``--a-b`` option of ``parser`` and its sub-parsers the hidden spelling ``--a_b`` (the one bundle
    config keys and ``python -m monai.bundle run`` use), and help that shows ``--a-b`` only."""
    base = parser.formatter_class
    if not issubclass(base, _OneSpellingFormatter):
        parser.formatter_class = type(base.__name__, (_OneSpellingFormatter, base), {})
    for action in parser._actions:
        for option in list(action.option_strings):
            alias = "--" + option[2:].replace("-", "_")
            if option.startswith("--") and alias != option and alias not in parser._option_string_actions:
                action.option_strings.append(alias)
                parser._option_string_actions[alias] = action
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                accept_underscores(sub)


def existing(path: str, name: str, what: str) -> str:
    """``path`` when it exists; else a bad-input error (exit 2) raised before a command imports torch or MONAI."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{name} {path}: no such file or folder; give {what}")
    return path


SAMPLES = "the folder `medgen sample` wrote (with samples.jsonl)"
DATALIST = "a datalist JSON (`medgen data index` writes one)"


def cmd_data_index(args: argparse.Namespace) -> int:
    from medgen.data.datalist import DatalistError, build_datalist, summary_table, write_datalist

    if args.val_fraction + args.test_fraction >= 1:
        raise DatalistError(f"--val-fraction {args.val_fraction} + --test-fraction {args.test_fraction} leaves no "
                            "training images; their sum must be below 1")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    datalist, summary = build_datalist(
        args.source, classes=classes, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed, image_column=args.image_column, label_column=args.label_column, uncertain=args.uncertain,
        root=args.root, views=args.views, verify=not args.no_verify, channels=args.channels,
        include_synthetic=args.include_synthetic,
    )
    write_datalist(datalist, args.out)
    if Path(args.source).suffix.lower() == ".csv":
        kept = sum(len(datalist[s]) for s in ("training", "validation", "test"))
        dropped = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.most_common()) or "none"
        print(f"{args.source}: {kept + sum(summary.skipped.values())} rows read, {kept} indexed; dropped: {dropped}")
    print(summary_table(datalist, summary))
    print(f"datalist written to {args.out}")
    return 0


def _fraction(value: str) -> float:
    """A split fraction in [0, 1)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number; give a fraction in [0, 1), e.g. 0.1") from None
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1); give a fraction such as 0.1")
    return number


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from medgen.bundles import config_file, find_bundle, parse_overrides, run_bundle
    from medgen.config import check_run

    overrides = parse_overrides(extra)
    if args.dataset_dir:
        from medgen.config import check_data_source

        check_data_source(args.dataset_dir)  # before MONAI is imported: a wrong path is reported at once
        overrides["dataset_dir"] = args.dataset_dir
    if args.export_to_bundle:
        overrides["export_to_bundle"] = True
    check_run(config_file(find_bundle(args.bundle), args.config), overrides, {"dataset_dir": "--dataset-dir"})
    run_bundle(args.bundle, args.config, "training", overrides)
    return 0


#: ``medgen sample`` flags and the inference.yaml keys they set
SAMPLE_FLAGS = {"per_class": "--per-class", "seed": "--seed", "guidance_scale": "--guidance",
                "num_inference_steps": "--steps", "sampler": "--sampler", "class_names": "--class",
                "shard": "--shard", "batch_size": "--batch-size", "guidance_interval": "--guidance-interval"}


def guidance_interval_arg(values: list[str] | None) -> list[float] | list[str] | None | str:
    """``--guidance-interval LOW HIGH`` as two floats, ``none`` as None (guide every step); not given: ``"bundle"``.
    Anything else comes back as given, for the config check to refuse with the flag's name and what it takes."""
    if values is None:
        return "bundle"
    if [v.lower() for v in values] == ["none"]:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        return values


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    if args.ckpt:
        existing(args.ckpt, "--ckpt", "a weights file (model.pt) or leave --ckpt out for <bundle>/models/model.pt")
    from medgen.bundles import config_file, find_bundle, parse_overrides, run_bundle
    from medgen.config import check_run

    overrides = parse_overrides(extra)
    given = {"per_class": args.per_class, "seed": args.seed, "guidance_scale": args.guidance,
             "sampler": args.sampler, "num_inference_steps": args.steps, "class_names": args.class_names,
             "shard": args.shard, "batch_size": args.batch_size}
    overrides.update({k: v for k, v in given.items() if v is not None})
    interval = guidance_interval_arg(args.guidance_interval)
    if interval != "bundle":
        overrides["guidance_interval"] = interval
    if args.sampler is not None and "num_inference_steps" not in overrides:
        from medgen.diffusion.solvers import DEFAULT_STEPS

        if args.sampler in DEFAULT_STEPS:  # a sampler named without --steps runs at its own default
            overrides["num_inference_steps"] = DEFAULT_STEPS[args.sampler]
    if args.out:
        overrides["output_dir"] = str(Path(args.out).resolve())
    if args.ckpt:
        overrides["ckpt_path"] = str(Path(args.ckpt).resolve())
    if args.quality_filter:
        overrides["quality_gate"] = str(Path(args.quality_filter).resolve())
    if args.domain_weights:
        overrides["domain_weights"] = str(Path(args.domain_weights).resolve())
    if args.guide:
        overrides["guide_path"] = "none" if args.guide.lower() == "none" else str(Path(args.guide).resolve())
    aliases = {k: SAMPLE_FLAGS[k] for k, v in given.items() if v is not None}
    if interval != "bundle":
        aliases["guidance_interval"] = SAMPLE_FLAGS["guidance_interval"]
    aliases.update({"output_dir": "--out", "ckpt_path": "--ckpt", "quality_gate": "--quality-filter",
                    "domain_weights": "--domain-weights", "guide_path": "--guide"})
    check_run(config_file(find_bundle(args.bundle), "inference"), overrides, aliases)
    run_bundle(args.bundle, "inference", "inference", overrides)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medgen.export.cli_commands import export_command

    return export_command(args.samples_dir, args.out, fmt=args.format, iod=args.iod, uid_root=args.uid_root,
                          patient_name=args.patient_name, patient_id=args.patient_id, bits=args.bits,
                          body_part=args.body_part, send_to=args.send_to, credentials_file=args.credentials,
                          retries=args.retries, report=args.report, pixel_spacing=args.pixel_spacing,
                          field_of_view_mm=args.field_of_view_mm, view_position=args.view_position,
                          calling_aet=args.calling_aet)


def cmd_send(args: argparse.Namespace) -> int:
    from medgen.export.cli_commands import send_command

    return send_command(args.path, args.to, credentials_file=args.credentials, retries=args.retries,
                        report=args.report, calling_aet=args.calling_aet)


def cmd_evaluate(args: argparse.Namespace) -> int:
    existing(args.samples_dir, "SAMPLES_DIR", SAMPLES)
    existing(args.datalist, "DATALIST", DATALIST)
    if args.judge_classifier:
        existing(args.judge_classifier, "--judge-classifier", "the judge_classifier.pt a `medgen judge` wrote")
    from medgen.metrics.commands import evaluate_command

    return evaluate_command(args.samples_dir, args.datalist, args.out, size=args.size, features=args.features,
                            domain_weights=args.domain_weights, max_real_per_class=args.max_real_per_class,
                            utility_sizes=args.utility_sizes, report=not args.no_report,
                            utility_json=args.utility_json, redact_paths=args.redact_paths,
                            judge=not args.no_judge, judge_classifier=args.judge_classifier)


def cmd_judge(args: argparse.Namespace) -> int:
    existing(args.samples_dir, "SAMPLES_DIR", SAMPLES)
    existing(args.datalist, "DATALIST", DATALIST)
    if args.classifier:
        existing(args.classifier, "--classifier", "the judge_classifier.pt an earlier `medgen judge` wrote")
    from medgen.metrics.judge import judge_command

    return judge_command(args.samples_dir, args.datalist, args.out, classifier=args.classifier, seed=args.seed,
                         epochs=args.epochs, train_per_class=args.train_per_class or None,
                         heldout_per_class=args.heldout_per_class or None, size=args.size, max_gap=args.max_gap,
                         batch_size=args.batch_size)


def cmd_audit(args: argparse.Namespace) -> int:
    existing(args.samples_dir, "SAMPLES_DIR", SAMPLES)
    existing(args.datalist, "DATALIST", DATALIST)
    from medgen.metrics.commands import audit_command

    return audit_command(args.samples_dir, args.datalist, args.out, size=args.size, percentile=args.percentile,
                         features=args.features, domain_weights=args.domain_weights,
                         max_train_per_class=args.max_train_per_class, pairs=args.pairs,
                         redact_paths=args.redact_paths)


def cmd_drift(args: argparse.Namespace) -> int:
    for name in ("reference", "new"):
        existing(getattr(args, name), name.upper(), "an image folder, a samples folder or a datalist JSON")
    from medgen.metrics.commands import drift_command

    return drift_command(args.reference, args.new, out=args.out, size=args.size, features=args.features,
                         domain_weights=args.domain_weights, reference_split=args.reference_split,
                         new_split=args.new_split, permutations=args.permutations, alpha=args.alpha)


def cmd_fit_gate(args: argparse.Namespace) -> int:
    existing(args.datalist, "DATALIST", DATALIST)
    from medgen.metrics.commands import fit_gate_command

    return fit_gate_command(args.datalist, args.out, size=args.size, features=args.features,
                            domain_weights=args.domain_weights, percentile=args.percentile, k=args.k)


def cmd_export_model(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats or set(formats) - {"ts", "onnx"}:  # checked before MONAI is imported
        raise ValueError(f"--format {args.format!r}: give ts, onnx or ts,onnx")
    if args.ckpt:
        existing(args.ckpt, "--ckpt", "a weights file (model.pt) or leave --ckpt out for <bundle>/models/model.pt")
    from medgen.networks.export import export_bundle

    result = export_bundle(args.bundle, ckpt_file=args.ckpt, out_dir=args.out, formats=formats,
                           opset_version=args.opset)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


ZOO_EXCLUSION_NAMES = ("none", "generative")  # medgen.zoo.ZOO_EXCLUSIONS, named here to keep --help light


def cmd_verify(args: argparse.Namespace) -> int:
    from medgen.bundles import list_bundles
    from medgen.zoo import verify_command

    bundles = args.bundles or [str(p) for p in list_bundles()]
    return max(verify_command(b, schema=args.schema, network=not args.no_network, mode=args.mode,
                              exclusions=args.zoo_exclusions) for b in bundles)


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from medgen.zoo_export import zoo_export_command

    return max(zoo_export_command(b, args.out, force=args.force) for b in args.bundles)


def cmd_serve(args: argparse.Namespace) -> int:
    from medgen.serve.commands import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneSpellingParser(prog="medgen", description=__doc__, epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"medgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="index data sets into MONAI datalists")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    index = data_verbs.add_parser("index", help="write a datalist JSON from a folder tree, npz, CSV or DICOM tree")
    index.add_argument("source", help="class-folder tree, MedMNIST .npz, CSV (path,label; or CheXpert's own "
                       "train.csv) or DICOM tree")
    index.add_argument("--out", required=True, help="datalist JSON to write")
    index.add_argument("--classes", help="comma-separated class names (default: all found, sorted); for a CheXpert "
                       "CSV either label columns, one class each ('Pneumonia,Pneumothorax,No Finding': rows positive "
                       "in exactly one), or two names for --label-column's negative,positive")
    index.add_argument("--val-fraction", type=_fraction, default=0.1,
                       help="in [0, 1), default 0.1; --val-fraction + --test-fraction must stay below 1")
    index.add_argument("--test-fraction", type=_fraction, default=0.1, help="in [0, 1), default 0.1")
    index.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    index.add_argument("--image-column", default=None, help="CSV column with image paths (default: path; "
                       "CheXpert's Path)")
    index.add_argument("--label-column", default=None, help="CSV column with labels (default: label); for CheXpert "
                       "one observation, e.g. Pneumonia (classes negative, positive)")
    index.add_argument("--root", help="folder CSV image paths are relative to (default: the CSV's folder); for "
                       "CheXpert the folder containing CheXpert-v1.0-small/ or that folder itself")
    index.add_argument("--views", default="frontal", help="CheXpert views to keep: frontal (default), "
                       "frontal,lateral, all, or projections such as PA or PA,AP")
    index.add_argument("--uncertain", default="ignore", choices=["ignore", "zeros", "ones", "soft"],
                       help="uncertain labels (-1; blank too outside CheXpert): ignore drops the row, zeros/ones "
                       "count it negative/positive, soft trains as ones and keeps soft_label 0.5 for metrics")
    index.add_argument("--no-verify", action="store_true", help="skip decoding every image at index time (faster "
                       "for a large CSV such as CheXpert's; a broken file is then skipped when loaded)")
    index.add_argument("--channels", type=int, choices=[1, 3], default=None,
                       help="the model's channels (1 grey, 3 RGB): the summary then counts the grey files a colour "
                       "model replicates, or the colour files a grey model reads as ITU-R 601 luma")
    index.add_argument("--include-synthetic", action="store_true",
                       help="keep synthetic images (DICOM SyntheticData YES, medgen's marked PNG/NIfTI, files in a "
                       "medgen samples or export folder), each item marked \"synthetic\": true, for a classifier's "
                       "real + synthetic training set; by default they are left out, and a medgen bundle refuses to "
                       "train on a datalist that holds any")
    index.set_defaults(func=cmd_data_index, takes_extra=False)

    def keys_help(example: str, key: str) -> str:
        return "\n".join(textwrap.fill(text, 79) for text in (
            f"bundle config keys: any other --key value (or --key=value) sets the bundle config key of that name, as "
            f"`python -m monai.bundle run` does: {example} sets {key} (the config file's spelling --{key} is the same "
            "key); a nested id joins its keys with # (--a#b value).", EXIT_CODES))

    train = verbs.add_parser("train", help="train a bundle (any config key as --key value)", allow_abbrev=False,
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog=keys_help("--max-epochs 5", "max_epochs"))
    train.add_argument("bundle", help="bundle folder or name, e.g. cxr_ddpm")
    train.add_argument("--dataset-dir", "--dataset_dir", help="data folder, npz, CSV or datalist JSON")
    train.add_argument("--config", default="train", help="config name in configs/ (default: train)")
    train.add_argument("--export-to-bundle", "--export_to_bundle", action="store_true", help="also write the final "
                       "weights to the bundle's models/model.pt (default: only to the run folder, "
                       "runs/<bundle>/<time or --run-name>)")
    train.set_defaults(func=cmd_train, takes_extra=True)

    sample = verbs.add_parser("sample", help="generate images per class with a trained bundle", allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=keys_help("--export-format dicom", "export_format"))
    sample.add_argument("bundle", help="bundle folder or name, e.g. cxr_ddpm")
    sample.add_argument("--per-class", "--per_class", type=int, default=None,
                        help="images per class (default: the bundle's)")
    sample.add_argument("--class", dest="class_names", action="append", help="class to generate (repeatable)")
    sample.add_argument("--seed", type=int, default=None, help="first seed (default: the bundle's)")
    sample.add_argument("--steps", type=int, default=None, help="sampling steps (default: the bundle's)")
    sample.add_argument("--guidance", type=float, default=None,
                        help="guidance scale (1 = off; default: the bundle's)")
    sample.add_argument("--guidance-interval", "--guidance_interval", nargs="+", metavar="SIGMA",
                        help="LOW HIGH: guide only the steps whose noise level sigma lies in [LOW, HIGH], the others "
                        "unguided; none: every step (default: the bundle's)")
    sample.add_argument("--guide", help="autoguidance: weights (model.pt) of a smaller, shorter-trained model of the "
                        "bundle to guide with, or none for classifier-free guidance (default: the bundle's guide "
                        "for its own weights)")
    sample.add_argument("--sampler", default=None, help="ddim, ddpm or dpmpp2m (DPM-Solver++ 2M, 15 steps unless "
                        "--steps); score bundles: dpmpp2m, pc, als, reverse (default: the bundle's)")
    sample.add_argument("--out", help="output folder (default: <bundle>/runs/samples)")
    sample.add_argument("--ckpt", help="weights file (default: <bundle>/models/model.pt)")
    sample.add_argument("--shard", help="i/n: make the i-th of n interleaved parts")
    sample.add_argument("--batch-size", "--batch_size", type=lambda v: v if v == "auto" else int(v),
                        help="images per batch, or auto")
    sample.add_argument("--quality-filter", "--quality_filter", metavar="GATE", help="quality gate .npz (medgen "
                        "fit-gate): regenerate images that fail it, record realism_score per image and the "
                        "rejection rate; the sampler and steps are kept")
    sample.add_argument("--domain-weights", "--domain_weights", help="domain classifier the gate was fitted with "
                        "(default: the one fit-gate recorded beside the gate)")
    sample.set_defaults(func=cmd_sample, takes_extra=True)
    parser.verb_parsers = {"train": train, "sample": sample}  # type: ignore[attr-defined]

    def features_args(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--size", type=int, default=64, help="images are compared at this size")
        p.add_argument("--features", default=default, help="feature extractors: inception, domain (comma-separated)")
        p.add_argument("--domain-weights", help="domain classifier weights (default: trained and cached on first use)")

    ev = verbs.add_parser("evaluate", help="FID/KID, precision/recall, diversity, audit, utility; writes "
                                           "metrics.json and report.html")
    ev.add_argument("samples_dir", help=SAMPLES)
    ev.add_argument("datalist", help="the real data's datalist JSON")
    ev.add_argument("--out", required=True, help="folder for metrics.json and report.html")
    features_args(ev, "inception,domain")
    ev.set_defaults(size=None)  # the image size recorded with the weights that made the samples, else 64
    ev.add_argument("--max-real-per-class", type=int, default=None,
                    help="real images per class (default: the quality protocol's caps, 1000 reference, 500 held-out)")
    ev.add_argument("--utility-sizes", help="train classifiers at these real sizes per class, e.g. 50,200,all (slow)")
    ev.add_argument("--utility-json", help="show this utility result (python -m benchmarks.utility) in the report "
                    "(default: utility.json in the samples folder, when there)")
    ev.add_argument("--no-report", action="store_true", help="write metrics.json only, no report.html")
    ev.add_argument("--redact-paths", action="store_true", help="name training files by their place in the "
                    "datalist and leave real training pixels out of report.html (PHI)")
    ev.add_argument("--no-judge", action="store_true", help="skip the classifier-judged section (medgen judge)")
    ev.add_argument("--judge-classifier", help="reuse this judge_classifier.pt instead of training the judge's "
                    "classifier")
    ev.set_defaults(func=cmd_evaluate, takes_extra=False)

    judge = verbs.add_parser("judge", help="label the samples with a classifier trained on the real training split: "
                             "accuracy real vs synthetic, confusion matrices, chi-square/KL/KS tests, calibration")
    judge.add_argument("samples_dir", help=SAMPLES)
    judge.add_argument("datalist", help="the real data's datalist JSON (training split: the classifier; test, else "
                       "validation: the real held-out images)")
    judge.add_argument("--out", required=True, help="folder for judge.json, the PNGs and judge_classifier.pt")
    judge.add_argument("--classifier", help="reuse this judge_classifier.pt (from an earlier run) instead of training")
    judge.add_argument("--seed", type=int, default=0, help="seeds the classifier and which real images are drawn")
    judge.add_argument("--epochs", type=int, default=8, help="classifier training epochs")
    judge.add_argument("--batch-size", type=int, default=64, help="classifier training batch size")
    judge.add_argument("--train-per-class", type=int, default=500, help="real training images per class (0: all)")
    judge.add_argument("--heldout-per-class", type=int, default=500, help="real held-out images per class (0: all)")
    judge.add_argument("--size", type=int, help="image size (default: the samples')")
    judge.add_argument("--max-gap", type=float, help="exit 1 when real minus synthetic accuracy exceeds this many "
                       "points (e.g. 5)")
    judge.set_defaults(func=cmd_judge, takes_extra=False)

    audit = verbs.add_parser("audit", help="memorisation audit; exit 1 when any image is too close to a training image")
    audit.add_argument("samples_dir", help=SAMPLES)
    audit.add_argument("datalist", help="the training data's datalist JSON (the images the model learnt from)")
    audit.add_argument("--out", required=True, help="folder for audit.json and closest_pairs.png")
    features_args(audit, "domain")
    audit.add_argument("--percentile", type=float, default=1.0,
                       help="threshold: this percentile of held-out-to-train distances")
    audit.add_argument("--max-train-per-class", type=int, help="training images per class compared against "
                       "(default: all)")
    audit.add_argument("--pairs", type=int, default=8, help="closest pairs shown side by side")
    audit.add_argument("--redact-paths", action="store_true", help="name training files by their place in the "
                       "datalist ('training[17]') in audit.json and do not write closest_pairs.png (real pixels)")
    audit.set_defaults(func=cmd_audit, takes_extra=False)

    drift = verbs.add_parser("drift", help="MMD drift test between two image sets; exit 1 when they differ")
    drift.add_argument("reference", help="folder, samples folder or datalist JSON")
    drift.add_argument("new", help="folder, samples folder or datalist JSON")
    drift.add_argument("--out", help="write the result as JSON")
    features_args(drift, "domain")
    drift.add_argument("--reference-split", default="test",
                       help="datalist split read when REFERENCE is a datalist (default test)")
    drift.add_argument("--new-split", default="test", help="datalist split read when NEW is a datalist (default test)")
    drift.add_argument("--permutations", type=int, default=500, help="permutations of the MMD test (default 500)")
    drift.add_argument("--alpha", type=float, default=0.05,
                       help="significance level: drift (exit 1) when p < alpha (default 0.05)")
    drift.set_defaults(func=cmd_drift, takes_extra=False)

    gate = verbs.add_parser("fit-gate", help="fit the realism quality gate on real images "
                                            "(for sample --quality-filter)")
    gate.add_argument("datalist", help="the real data's datalist JSON")
    gate.add_argument("out", help="gate file to write (.npz)")
    features_args(gate, "domain")
    gate.add_argument("--percentile", type=float, default=95.0, help="threshold percentile on held-out real images")
    gate.add_argument("--k", type=int, default=5, help="k of the k-NN distance")
    gate.set_defaults(func=cmd_fit_gate, takes_extra=False)

    export = verbs.add_parser("export", help="write a samples folder as DICOM (SC/CR/MR/VL microscopic), PNG, "
                              "16-bit PNG or NIfTI")
    export.add_argument("samples_dir", help="folder written by `medgen sample` (with samples.jsonl)")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--format", default="dicom", choices=["dicom", "png", "png16", "nifti"],
                        help="output format (default: %(default)s)")
    export.add_argument("--iod", default=None, choices=["sc", "cr", "mr", "vlm"],
                        help="DICOM IOD: Secondary Capture (grey or RGB), Computed Radiography or MR (grey), VL "
                        "Microscopic Image (RGB) (default: sc for grey samples, vlm for colour)")
    export.add_argument("--uid-root", help="UID prefix for the study/series/instance UIDs")
    export.add_argument("--patient-name", help="synthetic patient name (default: one per run)")
    export.add_argument("--patient-id", help="synthetic patient ID (default: one per run)")
    export.add_argument("--bits", type=int, default=16, choices=[12, 16],
                        help="DICOM bits stored (default: %(default)s)")
    export.add_argument("--body-part", help="DICOM BodyPartExamined, e.g. CHEST, HEAD (default: what the bundle's "
                        "training source was; none when unknown)")
    export.add_argument("--pixel-spacing", "--pixel_spacing", type=float, nargs="+", metavar="MM",
                        help="pixel spacing in mm (one value, or rows columns); overrides what the samples record")
    export.add_argument("--field-of-view-mm", "--field_of_view_mm", type=float, nargs="+", metavar="MM",
                        help="nominal field of view in mm (one value, or rows columns): spacing = field / image "
                        "size; for sources without spacing (default: the bundle's nominal field, see docs/dicom.md)")
    export.add_argument("--view-position", "--view_position", choices=["AP", "PA", "LL", "RL", "LLD", "RLD"],
                        help="CR ViewPosition (default: what the bundle's training films were, e.g. AP for cxr_ddpm; "
                        "none when unknown)")
    export.add_argument("--calling-aet", "--calling_aet", default="MEDGEN",
                        help="our AE title when sending with --send-to dimse://... (default: %(default)s)")
    export.add_argument("--send-to", help="after export, send to dimse://AET@host:port or dicomweb://host:port/root")
    export.add_argument("--credentials", help="credentials file for the PACS (else MEDGEN_PACS_USER/PASSWORD)")
    export.add_argument("--retries", type=int, default=3, help="attempts per file on transient failure")
    export.add_argument("--report", help="per-file send report (.csv or .json)")
    export.set_defaults(func=cmd_export, takes_extra=False)

    send = verbs.add_parser("send", help="send DICOM files to a PACS (DIMSE C-STORE or DICOMweb STOW-RS)")
    send.add_argument("path", help="a DICOM file or a folder of them")
    send.add_argument("--to", required=True, help="dimse://AET@host:port or dicomweb://host:port/root")
    send.add_argument("--credentials", help="credentials file (else MEDGEN_PACS_USER/MEDGEN_PACS_PASSWORD)")
    send.add_argument("--retries", type=int, default=3, help="attempts per file on transient failure")
    send.add_argument("--report", help="per-file result report (.csv or .json)")
    send.add_argument("--calling-aet", default="MEDGEN", help="our AE title in the association (default: "
                      "%(default)s)")
    send.set_defaults(func=cmd_send, takes_extra=False)

    export_model = verbs.add_parser("export-model", help="export a bundle's weights as model.ts and model.onnx "
                                    "beside them, each checked against PyTorch and naming the weights' sha256")
    export_model.add_argument("bundle", help="bundle folder or name")
    export_model.add_argument("--ckpt", help="weights (default <bundle>/models/model.pt)")
    export_model.add_argument("--out", help="output folder (default: the weights' folder, <bundle>/models for the "
                                            "bundle's own)")
    export_model.add_argument("--format", default="ts,onnx", help="comma-separated: ts, onnx (default both)")
    export_model.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or later (default 18)")
    export_model.set_defaults(func=cmd_export_model, takes_extra=False)

    verify = verbs.add_parser("verify", help="check bundles as the MONAI Model Zoo's CI (ci/verify_bundle.py) does, "
                                              "plus medgen's review; exit 1 where the zoo would fail")
    verify.add_argument("bundles", nargs="*", help="bundle folders or names (default: all bundles found)")
    verify.add_argument("--mode", default="full", choices=["min", "full"],
                        help="the zoo's mode: min (files, version, requirements, metadata schema) or full (also the "
                             "network called with the image alone, and TorchScript export); default full")
    verify.add_argument("--zoo-exclusions", default="none", choices=sorted(ZOO_EXCLUSION_NAMES),
                        help="none (default), or generative: skip the single-input shape check and TorchScript, as "
                             "the zoo's CI does for the generative bundles it lists in ci/bundle_custom_data.py")
    verify.add_argument("--schema", help="metadata schema JSON (default: found by name in ../shared/schemas)")
    verify.add_argument("--no-network", action="store_true", help="skip building and running the networks (the zoo "
                                                                  "part then runs in min mode)")
    verify.set_defaults(func=cmd_verify, takes_extra=False)

    zoo_export = verbs.add_parser("zoo-export", help="write bundles in the MONAI Model Zoo's self-contained form "
                                                     "(JSON configs, scripts/, weights), runnable without medgen")
    zoo_export.add_argument("bundles", nargs="+", help="bundle folders or names")
    zoo_export.add_argument("--out", required=True, help="folder to write <out>/<bundle name> into")
    zoo_export.add_argument("--force", action="store_true", help="replace an existing <out>/<bundle name>")
    zoo_export.set_defaults(func=cmd_zoo_export, takes_extra=False)

    from medgen.serve.commands import add_serve_arguments

    serve = verbs.add_parser("serve", help="REST API, job worker and web page; `serve create-key|list-keys|revoke-key` "
                                            "manage keys")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve, takes_extra=False)
    accept_underscores(parser)
    return parser


def add_bundle_keys_help(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """For ``medgen train|sample [BUNDLE] --help``: list the bundle's keys (all bundles' when none is named)."""
    from medgen.bundles import config_file, find_bundle, list_bundles
    from medgen.config import config_keys_help

    verb = next((a for a in argv if not a.startswith("-")), None)
    sub = getattr(parser, "verb_parsers", {}).get(verb)
    if sub is None:
        return
    rest = argv[argv.index(verb) + 1:]
    named = next((a for a in rest if not a.startswith("-")), None)
    config = "inference" if verb == "sample" else "train"
    for flag in ("--config",):
        if flag in rest and rest.index(flag) + 1 < len(rest):
            config = rest[rest.index(flag) + 1]
    try:
        bundles = [find_bundle(named)] if named else list_bundles()
        parts = [sub.epilog or ""]
        for bundle in bundles:
            if not named and not any((bundle / "configs" / f"{config}{ext}").is_file() for ext in (".yaml", ".json")):
                continue  # e.g. a latent bundle has train_autoencoder / train_diffusion, no train
            path = config_file(bundle, config)
            parts.append(f"keys of {bundle.name} ({path.parent.name}/{path.name}), with their defaults:\n"
                         + config_keys_help(path))
    except FileNotFoundError:
        return
    sub.epilog = "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        add_bundle_keys_help(parser, argv)
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) if args.takes_extra else args.func(args)
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        print(stop.code, file=sys.stderr)  # a config check's one-line message(s), as `python -m monai.bundle` prints
        return getattr(stop, "exit_code", 2)  # a failed export/send step of a sample run: its own code
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, KeyError,
            RuntimeError) as err:
        cause = root_cause(err)
        if isinstance(cause, RuntimeError) and not isinstance(cause, FileNotFoundError):
            raise  # not a user error: keep the traceback
        print(f"medgen: error: {cause}", file=sys.stderr)
        return 2


def root_cause(err: BaseException) -> BaseException:
    """The error under MONAI's config-parser wrappers (``RuntimeError: Failed to evaluate ...``)."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err

if __name__ == "__main__":
    sys.exit(main())
