"""The ``medgen`` command as a user meets it: help on every option, one spelling per option, a start that does not
wait for torch, and exit codes 0 (done), 1 (the work failed) and 2 (bad usage or input)."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medgen.bundles import parse_overrides
from medgen.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "monai", "ignite", "numpy", "fastapi", "pydicom", "PIL", "mlflow")
TIMEOUT = 900  # the CI box is busy; no timing is asserted here (README, 'Exit codes' and the report give figures)


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(words, parser)`` for the command and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


COMMANDS = [path for path, _ in parsers(build_parser())]


def medgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgen.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=TIMEOUT)


def test_every_option_and_subcommand_has_help():
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                listed = {a.dest for a in action._choices_actions if a.help}
                missing += [f"medgen {' '.join((*path, name))} (sub-command)" for name in action.choices
                            if name not in listed]
            elif not (action.help and action.help.strip()) or action.help == argparse.SUPPRESS:
                name = action.option_strings[0] if action.option_strings else action.dest
                missing.append(f"medgen {' '.join(path)} {name}")
    assert not missing, f"options without help text: {missing}"


def test_help_shows_the_hyphenated_spelling_and_the_underscore_one_parses_the_same():
    for path, parser in parsers(build_parser()):
        options_part = re.split(r"\n(?:bundle config keys|exit codes):", parser.format_help())[0]
        shown = re.findall(r"(?<![\w-])--[a-z0-9]+_[a-z0-9_]+", options_part)
        assert not shown, f"medgen {' '.join(path)} --help shows underscore spellings {shown}"
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and "-" in option[2:]:
                    alias = "--" + option[2:].replace("-", "_")
                    assert parser._option_string_actions.get(alias) is action, \
                        f"medgen {' '.join(path)}: {alias} is not accepted for {option}"


@pytest.mark.parametrize("argv,dest,value", [
    (["train", "cxr_ddpm", "--dataset-dir", "d"], "dataset_dir", "d"),
    (["train", "cxr_ddpm", "--export-to-bundle"], "export_to_bundle", True),
    (["sample", "cxr_ddpm", "--per-class", "3"], "per_class", 3),
    (["sample", "cxr_ddpm", "--batch-size", "auto"], "batch_size", "auto"),
    (["sample", "cxr_ddpm", "--quality-filter", "g.npz"], "quality_filter", "g.npz"),
    (["evaluate", "s", "d", "--out", "o", "--max-real-per-class", "5"], "max_real_per_class", 5),
    (["audit", "s", "d", "--out", "o", "--redact-paths"], "redact_paths", True),
    (["drift", "a", "b", "--reference-split", "validation"], "reference_split", "validation"),
    (["export", "s", "--out", "o", "--send-to", "dimse://A@h:1"], "send_to", "dimse://A@h:1"),
    (["send", "p", "--to", "dimse://A@h:1", "--calling-aet", "ME"], "calling_aet", "ME"),
    (["serve", "--max-body-bytes", "2048"], "max_body_bytes", 2048),
    (["data", "index", "src", "--out", "o", "--val-fraction", "0.2"], "val_fraction", 0.2),
])
def test_both_spellings_parse_to_the_same_option(argv, dest, value):
    flag = next(a for a in argv if a.startswith("--") and "-" in a[2:])
    underscored = ["--" + a[2:].replace("-", "_") if a == flag else a for a in argv]
    hyphen_args, hyphen_extra = build_parser().parse_known_args(argv)
    under_args, under_extra = build_parser().parse_known_args(underscored)
    assert vars(hyphen_args) == vars(under_args) and hyphen_extra == under_extra == []
    assert getattr(hyphen_args, dest) == value


def test_train_passes_other_keys_through_as_config_overrides_in_either_spelling():
    parser = build_parser()
    args, extra = parser.parse_known_args(["train", "cxr_ddpm", "--max-epochs", "3", "--run_name", "first",
                                           "--train#trainer#max_epochs=2"])
    assert args.bundle == "cxr_ddpm"
    assert parse_overrides(extra) == {"max_epochs": 3, "run_name": "first", "train#trainer#max_epochs": 2}
    assert parse_overrides(["--max_epochs", "3"]) == parse_overrides(["--max-epochs", "3"])
    help_text = medgen("train", "cxr_ddpm", "--help").stdout
    assert "--max-epochs 5 sets max_epochs" in " ".join(help_text.split())  # how keys map to the config
    assert any(line.strip().startswith("--max-epochs 50") for line in help_text.splitlines())


def test_abbreviations_still_work_with_two_spellings():
    args = build_parser().parse_args(["evaluate", "s", "d", "--out", "o", "--max-real", "7", "--domain", "w.pt"])
    assert args.max_real_per_class == 7 and args.domain_weights == "w.pt"


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w) or "medgen" for w in COMMANDS])
def test_every_help_runs_and_exits_0(words):
    run = medgen(*words, "--help")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: medgen {' '.join(words)}".rstrip()), run.stdout[:300]
    assert "Traceback" not in run.stderr


def test_console_script_help_exits_0():
    script = Path(sys.executable).with_name("medgen")
    if not script.is_file():
        pytest.skip(f"no medgen console script beside {sys.executable}")
    run = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT)
    assert run.returncode == 0 and "exit codes: 0 done" in run.stdout


def imported_after(code: str) -> list[str]:
    probe = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} "
                            "if m in sys.modules))"], capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT)
    assert probe.returncode == 0, probe.stderr[-2000:]
    return eval(probe.stdout.strip().splitlines()[-1])  # a list literal printed by the probe


def test_help_imports_neither_torch_nor_monai():
    assert imported_after("import medgen.cli") == []
    assert imported_after("import medgen.cli as c\np = c.build_parser()\n"
                          "c.add_bundle_keys_help(p, ['train', 'cxr_ddpm', '--help'])\n"
                          "c.add_bundle_keys_help(p, ['sample', '--help'])\np.format_help()") == []


@pytest.mark.parametrize("argv", [
    ["audit", "/nonexistent/samples", "/nonexistent/datalist.json", "--out", "/nonexistent/out"],
    ["evaluate", str(REPO), "/nonexistent/datalist.json", "--out", "/nonexistent/out"],
    ["drift", "/nonexistent/a", str(REPO)],
    ["fit-gate", "/nonexistent/datalist.json", "/nonexistent/gate.npz"],
    ["train", "cxr_ddpm", "--dataset-dir", "/nonexistent/medgen-data"],
    ["sample", "cxr_ddpm", "--ckpt", "/nonexistent/model.pt"],
    ["export-model", "cxr_ddpm", "--format", "pt"],
])
def test_bad_input_is_reported_before_torch_is_imported(argv):
    code = f"import medgen.cli as c\nassert c.main({argv!r}) == 2"
    assert imported_after(code) == []


def test_missing_dataset_dir_exits_2_and_names_the_documented_flag():
    for flag in ("--dataset-dir", "--dataset_dir"):
        run = medgen("train", "cxr_ddpm", flag, "/nonexistent/medgen-data")
        assert run.returncode == 2
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("medgen: error: data directory /nonexistent/medgen-data does not exist")
        assert "--dataset-dir <dir>" in last and "--dataset_dir" not in last


@pytest.mark.slow
def test_missing_default_data_exits_2_and_names_the_documented_flag(tmp_path):
    run = medgen("train", "cxr_ddpm", "--output_dir", str(tmp_path / "run"),
                 env={"MEDGEN_DATA_DIR": "/nonexistent-data", "MEDGEN_RUNS_DIR": str(tmp_path)})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "/nonexistent-data/chest_xray_kermany_224 does not exist" in last
    assert "--dataset-dir <dir>" in last and "--dataset_dir" not in last


@pytest.mark.parametrize("argv,says", [
    (["evaluate", "s", "d"], "the following arguments are required: --out"),
    (["audit", "s", "d", "--out", "o", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["train"], "the following arguments are required: bundle"),
    (["sample", "no_such_bundle"], "no bundle 'no_such_bundle'"),
    (["audit", "/nonexistent/samples", "d", "--out", "o"], "SAMPLES_DIR /nonexistent/samples: no such file or folder"),
    (["export-model", "cxr_ddpm", "--format", "pt"], "--format 'pt': give ts, onnx or ts,onnx"),
    (["sample", "cxr_ddpm", "--guidance-interval", "5", "1"],
     "'guidance_interval' (--guidance-interval) must be two noise levels [low, high] with 0 <= low < high"),
    (["data", "index", "/nonexistent/source", "--out", "o.json"], "/nonexistent/source does not exist"),
    (["send", str(REPO / "README.md"), "--to", "ftp://pacs"], "unknown target scheme"),
])
def test_bad_usage_or_input_exits_2_with_one_line(argv, says):
    run = medgen(*argv)
    assert run.returncode == 2, run.stdout[-1000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert says in run.stderr.strip().splitlines()[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_work_exits_1(tmp_path):
    """Sending to a PACS that does not answer: the input is fine, the work (storing the file) failed."""
    from pydicom.data import get_testdata_file

    dicom = Path(get_testdata_file("CT_small.dcm"))
    report = tmp_path / "report.csv"
    run = medgen("send", str(dicom), "--to", f"dimse://NOBODY@127.0.0.1:{closed_port()}", "--retries", "1",
                 "--report", str(report))
    assert run.returncode == 1, run.stdout[-1000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "failed" in report.read_text()


@pytest.mark.slow
def test_sample_run_whose_send_step_fails_exits_1(tmp_path):
    """The export/send step of a sample run keeps its exit code: 1 when the files were not stored."""
    if not (REPO / "bundles" / "cxr_ddpm" / "models" / "model.pt").is_file():
        pytest.skip("cxr_ddpm has no weights in this checkout")
    run = medgen("sample", "cxr_ddpm", "--per-class", "1", "--steps", "2", "--out", str(tmp_path / "samples"),
                 "--export-format", "dicom", "--send-to", f"dimse://NOBODY@127.0.0.1:{closed_port()}")
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("medgen: error: export finished with exit code 1")
