"""The ``medgen`` command: one verb per stage, each a thin layer over a bundle config or a stage's function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medgen import __version__

logger = logging.getLogger("medgen")


def cmd_data_index(args: argparse.Namespace) -> int:
    from medgen.data.datalist import DatalistError, build_datalist, summary_table, write_datalist

    if args.val_fraction + args.test_fraction >= 1:
        raise DatalistError(f"--val-fraction {args.val_fraction} + --test-fraction {args.test_fraction} leaves no "
                            "training images; their sum must be below 1")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    datalist, summary = build_datalist(
        args.source, classes=classes, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed, image_column=args.image_column, label_column=args.label_column, uncertain=args.uncertain,
        root=args.root, views=args.views, verify=not args.no_verify,
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
        overrides["dataset_dir"] = args.dataset_dir
    if args.export_to_bundle:
        overrides["export_to_bundle"] = True
    check_run(config_file(find_bundle(args.bundle), args.config), overrides, {"dataset_dir": "--dataset-dir"})
    run_bundle(args.bundle, args.config, "training", overrides)
    return 0


#: ``medgen sample`` flags and the inference.yaml keys they set
SAMPLE_FLAGS = {"per_class": "--per-class", "seed": "--seed", "guidance_scale": "--guidance",
                "num_inference_steps": "--steps", "sampler": "--sampler", "class_names": "--class",
                "shard": "--shard", "batch_size": "--batch-size"}


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    from medgen.bundles import config_file, find_bundle, parse_overrides, run_bundle
    from medgen.config import check_run

    overrides = parse_overrides(extra)
    given = {"per_class": args.per_class, "seed": args.seed, "guidance_scale": args.guidance,
             "sampler": args.sampler, "num_inference_steps": args.steps, "class_names": args.class_names,
             "shard": args.shard, "batch_size": args.batch_size}
    overrides.update({k: v for k, v in given.items() if v is not None})
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
    aliases = {k: SAMPLE_FLAGS[k] for k, v in given.items() if v is not None}
    aliases.update({"output_dir": "--out", "ckpt_path": "--ckpt", "quality_gate": "--quality-filter",
                    "domain_weights": "--domain-weights"})
    check_run(config_file(find_bundle(args.bundle), "inference"), overrides, aliases)
    run_bundle(args.bundle, "inference", "inference", overrides)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medgen.export.cli_commands import export_command

    return export_command(args.samples_dir, args.out, fmt=args.format, iod=args.iod, uid_root=args.uid_root,
                          patient_name=args.patient_name, patient_id=args.patient_id, bits=args.bits,
                          body_part=args.body_part, send_to=args.send_to, credentials_file=args.credentials,
                          retries=args.retries, report=args.report)


def cmd_send(args: argparse.Namespace) -> int:
    from medgen.export.cli_commands import send_command

    return send_command(args.path, args.to, credentials_file=args.credentials, retries=args.retries,
                        report=args.report, calling_aet=args.calling_aet)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medgen.metrics.commands import evaluate_command

    return evaluate_command(args.samples_dir, args.datalist, args.out, size=args.size, features=args.features,
                            domain_weights=args.domain_weights, max_real_per_class=args.max_real_per_class,
                            utility_sizes=args.utility_sizes, report=not args.no_report,
                            utility_json=args.utility_json, redact_paths=args.redact_paths)


def cmd_audit(args: argparse.Namespace) -> int:
    from medgen.metrics.commands import audit_command

    return audit_command(args.samples_dir, args.datalist, args.out, size=args.size, percentile=args.percentile,
                         features=args.features, domain_weights=args.domain_weights,
                         max_train_per_class=args.max_train_per_class, pairs=args.pairs,
                         redact_paths=args.redact_paths)


def cmd_drift(args: argparse.Namespace) -> int:
    from medgen.metrics.commands import drift_command

    return drift_command(args.reference, args.new, out=args.out, size=args.size, features=args.features,
                         domain_weights=args.domain_weights, reference_split=args.reference_split,
                         new_split=args.new_split, permutations=args.permutations, alpha=args.alpha)


def cmd_fit_gate(args: argparse.Namespace) -> int:
    from medgen.metrics.commands import fit_gate_command

    return fit_gate_command(args.datalist, args.out, size=args.size, features=args.features,
                            domain_weights=args.domain_weights, percentile=args.percentile, k=args.k)


def cmd_export_model(args: argparse.Namespace) -> int:
    from medgen.networks.export import export_bundle

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    result = export_bundle(args.bundle, ckpt_file=args.ckpt, out_dir=args.out, formats=formats,
                           opset_version=args.opset)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from medgen.bundles import list_bundles
    from medgen.zoo import verify_command

    bundles = args.bundles or [str(p) for p in list_bundles()]
    return max(verify_command(b, schema=args.schema, network=not args.no_network) for b in bundles)


def cmd_serve(args: argparse.Namespace) -> int:
    from medgen.serve.commands import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgen", description=__doc__)
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
    index.add_argument("--seed", type=int, default=0)
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
    index.set_defaults(func=cmd_data_index, takes_extra=False)

    keys_help = "bundle keys: any of them as --key value (or --key=value; - and _ alike), e.g. --max-epochs 5"
    train = verbs.add_parser("train", help="train a bundle (any config key as --key value)", allow_abbrev=False,
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=keys_help)
    train.add_argument("bundle", help="bundle folder or name, e.g. cxr_ddpm")
    train.add_argument("--dataset-dir", "--dataset_dir", help="data folder, npz, CSV or datalist JSON")
    train.add_argument("--config", default="train", help="config name in configs/ (default: train)")
    train.add_argument("--export-to-bundle", "--export_to_bundle", action="store_true", help="also write the final "
                       "weights to the bundle's models/model.pt (default: only to the run folder, "
                       "runs/<bundle>/<time or --run_name>)")
    train.set_defaults(func=cmd_train, takes_extra=True)

    sample = verbs.add_parser("sample", help="generate images per class with a trained bundle", allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=keys_help)
    sample.add_argument("bundle")
    sample.add_argument("--per-class", "--per_class", type=int, default=None,
                        help="images per class (default: the bundle's)")
    sample.add_argument("--class", dest="class_names", action="append", help="class to generate (repeatable)")
    sample.add_argument("--seed", type=int, default=None, help="first seed (default: the bundle's)")
    sample.add_argument("--steps", type=int, default=None, help="sampling steps (default: the bundle's)")
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (1 = off; default: the bundle's)")
    sample.add_argument("--sampler", default=None, help="ddim, ddpm or dpmpp2m (DPM-Solver++ 2M, 15 steps unless "
                        "--steps); score bundles: pc, als, reverse (default: the bundle's)")
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
    ev.add_argument("samples_dir")
    ev.add_argument("datalist", help="the real data's datalist JSON")
    ev.add_argument("--out", required=True)
    features_args(ev, "inception,domain")
    ev.set_defaults(size=None)  # the image size recorded with the weights that made the samples, else 64
    ev.add_argument("--max-real-per-class", type=int, default=None,
                    help="real images per class (default: the quality protocol's caps, 1000 reference, 500 held-out)")
    ev.add_argument("--utility-sizes", help="train classifiers at these real sizes per class, e.g. 50,200,all (slow)")
    ev.add_argument("--utility-json", help="show this utility result (python -m benchmarks.utility) in the report "
                    "(default: utility.json in the samples folder, when there)")
    ev.add_argument("--no-report", action="store_true")
    ev.add_argument("--redact-paths", action="store_true", help="name training files by their place in the "
                    "datalist and leave real training pixels out of report.html (PHI)")
    ev.set_defaults(func=cmd_evaluate, takes_extra=False)

    audit = verbs.add_parser("audit", help="memorisation audit; exit 1 when any image is too close to a training image")
    audit.add_argument("samples_dir")
    audit.add_argument("datalist")
    audit.add_argument("--out", required=True)
    features_args(audit, "domain")
    audit.add_argument("--percentile", type=float, default=1.0,
                       help="threshold: this percentile of held-out-to-train distances")
    audit.add_argument("--max-train-per-class", type=int)
    audit.add_argument("--pairs", type=int, default=8, help="closest pairs shown side by side")
    audit.add_argument("--redact-paths", action="store_true", help="name training files by their place in the "
                       "datalist ('training[17]') in audit.json and do not write closest_pairs.png (real pixels)")
    audit.set_defaults(func=cmd_audit, takes_extra=False)

    drift = verbs.add_parser("drift", help="MMD drift test between two image sets; exit 1 when they differ")
    drift.add_argument("reference", help="folder, samples folder or datalist JSON")
    drift.add_argument("new", help="folder, samples folder or datalist JSON")
    drift.add_argument("--out", help="write the result as JSON")
    features_args(drift, "domain")
    drift.add_argument("--reference-split", default="test")
    drift.add_argument("--new-split", default="test")
    drift.add_argument("--permutations", type=int, default=500)
    drift.add_argument("--alpha", type=float, default=0.05)
    drift.set_defaults(func=cmd_drift, takes_extra=False)

    gate = verbs.add_parser("fit-gate", help="fit the realism quality gate on real images "
                                            "(for sample --quality-filter)")
    gate.add_argument("datalist")
    gate.add_argument("out", help="gate file to write (.npz)")
    features_args(gate, "domain")
    gate.add_argument("--percentile", type=float, default=95.0, help="threshold percentile on held-out real images")
    gate.add_argument("--k", type=int, default=5, help="k of the k-NN distance")
    gate.set_defaults(func=cmd_fit_gate, takes_extra=False)

    export = verbs.add_parser("export", help="write a samples folder as DICOM (SC/CR/MR), PNG, 16-bit PNG or NIfTI")
    export.add_argument("samples_dir", help="folder written by `medgen sample` (with samples.jsonl)")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--format", default="dicom", choices=["dicom", "png", "png16", "nifti"])
    export.add_argument("--iod", default="sc", choices=["sc", "cr", "mr"],
                        help="DICOM IOD: Secondary Capture, Computed Radiography or MR")
    export.add_argument("--uid-root", help="UID prefix for the study/series/instance UIDs")
    export.add_argument("--patient-name", help="synthetic patient name (default: one per run)")
    export.add_argument("--patient-id", help="synthetic patient ID (default: one per run)")
    export.add_argument("--bits", type=int, default=16, choices=[12, 16])
    export.add_argument("--body-part", default="CHEST")
    export.add_argument("--send-to", help="after export, send to dimse://AET@host:port or dicomweb://host:port/root")
    export.add_argument("--credentials", help="credentials file for the PACS (else MEDGEN_PACS_USER/PASSWORD)")
    export.add_argument("--retries", type=int, default=3)
    export.add_argument("--report", help="per-file send report (.csv or .json)")
    export.set_defaults(func=cmd_export, takes_extra=False)

    send = verbs.add_parser("send", help="send DICOM files to a PACS (DIMSE C-STORE or DICOMweb STOW-RS)")
    send.add_argument("path", help="a DICOM file or a folder of them")
    send.add_argument("--to", required=True, help="dimse://AET@host:port or dicomweb://host:port/root")
    send.add_argument("--credentials", help="credentials file (else MEDGEN_PACS_USER/MEDGEN_PACS_PASSWORD)")
    send.add_argument("--retries", type=int, default=3, help="attempts per file on transient failure")
    send.add_argument("--report", help="per-file result report (.csv or .json)")
    send.add_argument("--calling-aet", default="MEDGEN")
    send.set_defaults(func=cmd_send, takes_extra=False)

    export_model = verbs.add_parser("export-model", help="export a bundle's weights as models/model.ts and "
                                    "models/model.onnx, each checked against PyTorch")
    export_model.add_argument("bundle", help="bundle folder or name")
    export_model.add_argument("--ckpt", help="weights (default <bundle>/models/model.pt)")
    export_model.add_argument("--out", help="output folder (default <bundle>/models)")
    export_model.add_argument("--format", default="ts,onnx", help="comma-separated: ts, onnx (default both)")
    export_model.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or later (default 18)")
    export_model.set_defaults(func=cmd_export_model, takes_extra=False)

    verify = verbs.add_parser("verify", help="check bundles as the MONAI Model Zoo's CI does, offline")
    verify.add_argument("bundles", nargs="*", help="bundle folders or names (default: all bundles found)")
    verify.add_argument("--schema", help="metadata schema JSON (default: found by name in ../shared/schemas)")
    verify.add_argument("--no-network", action="store_true", help="skip building and running the networks")
    verify.set_defaults(func=cmd_verify, takes_extra=False)

    from medgen.serve.commands import add_serve_arguments

    serve = verbs.add_parser("serve", help="REST API, job worker and web page; `serve create-key|list-keys|revoke-key` "
                                            "manage keys")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve, takes_extra=False)
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
        return 2
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
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
