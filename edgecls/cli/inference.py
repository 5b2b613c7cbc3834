"""`inference.py --img-path PATH`: top-K classes per image from a checkpoint or an ONNX file.

One image: prints the top-K and writes `--save-path` as `{"img_path": ..., "0_0": [[score, label], ...]}`.
A folder or a glob: one such JSON per image in a folder (the `--save-path` without `.json`), which is
exactly what `eval_utils/eval.py --preds` reads, plus `summary.csv`, and prints a table of the first
`--show` images. Without `--save-path`, a new run folder runs/inference/<name>/ gets them.
The flags are generated from InferenceCommand; the work is edgecls.classify's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edgecls.cli.common import print_table, progress_setting, run_cli, threads_setting
from edgecls.data.presets import PRESETS, RESIZE_POLICIES
from edgecls.errors import UserError
from edgecls.settings import (
    SWITCH,
    build_parser,
    check,
    flag_names,
    parse_command_line,
    parse_size,
    setting,
)

IO, MODEL, PREPROCESS, HARDWARE = (
    "input and output",
    "model",
    "preprocessing overrides (default: what the model file stores)",
    "hardware",
)


@dataclass
class InferenceCommand:
    # ---- input and output
    img_path: str | None = setting(
        None,
        "an image file, a folder of images, a quoted glob ('imgs/*.jpg'), or a shard folder (or one .tar of it)",
        group=IO,
        required=True,
    )
    save_path: str | None = setting(
        None,
        "JSON file for one image; for many images the folder <save-path minus .json> gets one JSON "
        "per image and summary.csv (default: a new run folder runs/inference/<name>/, holding "
        "inference_result.json for one image)",
        group=IO,
    )
    name: str | None = setting(
        None,
        "the default run folder's name (default: the input's name); -2, -3, ... is added when "
        "runs/inference/<name> exists. Not used with --save-path",
        group=IO,
    )
    show: int = setting(
        10, "many images: print a table of the first N (file, top-1 class, score); 0: none", group=IO,
        parse=int, at_least=0,
    )  # fmt: skip
    topk: int = setting(5, "classes listed per image (capped at the class count)", group=IO, parse=int, at_least=1)
    force: bool = setting(
        False,
        "replace an existing --save-path file, or the prediction files an earlier run left in the "
        "output folder (other files are kept)",
        group=IO,
        kind=SWITCH,
    )
    progress: bool = progress_setting(IO)
    # ---- model
    snapshot: str | None = setting(
        None, "edgecls checkpoint, or a bare state_dict with --backbone", group=MODEL, metavar="PTH"
    )
    onnx: str | None = setting(
        None, "ONNX model to run with onnxruntime instead of --snapshot", group=MODEL, metavar="ONNX"
    )
    backbone: str | None = setting(
        None, "backbone for a bare state_dict (default: read from the checkpoint)", group=MODEL
    )
    model_def_path: str | None = setting("./models/", "folder of plugin .py files that register backbones", group=MODEL)
    class_id_path: str | None = setting(
        None,
        'class map {"0": name, ...} overriding the names in the model file',
        group=MODEL,
        flags=("--class_id_path", "--class-id-path"),
    )
    # ---- preprocessing overrides
    input_size: tuple[int, int] | None = setting(
        None, "model input, e.g. 224 or 56x32", group=PREPROCESS, parse=parse_size, metavar="HxW"
    )
    preprocess: str | None = setting(None, "normalization preset", group=PREPROCESS, choices=tuple(sorted(PRESETS)))
    resize: str | None = setting(None, "resize policy", group=PREPROCESS, choices=RESIZE_POLICIES)
    # ---- hardware
    gpu: int = setting(-1, "CUDA device index; -1 for the CPU", group=HARDWARE, parse=int)
    batch_size: int = setting(32, "images per forward pass", group=HARDWARE, parse=int, at_least=1)
    workers: int | None = setting(None, "decode threads (default: min(4, CPU count))", group=HARDWARE, parse=int)
    threads: int = threads_setting(HARDWARE)


FLAGS = flag_names(InferenceCommand)


def get_args_parser():
    return build_parser(
        InferenceCommand,
        prog="inference.py",
        description="Classify one image, a folder (recursively) or a glob with a checkpoint or an ONNX file.",
    )


def parse(argv: list[str] | None) -> InferenceCommand:
    values, _ = parse_command_line(InferenceCommand, get_args_parser(), argv)
    s = InferenceCommand(**values)
    check(s)
    return s


def load(s: InferenceCommand):
    from edgecls.predict import predictor_for

    return predictor_for(s, log=print)


def print_single(record: dict, out=sys.stdout) -> None:
    print(f"{record['img_path']}:", file=out)
    for rank, (score, label) in enumerate(record["0_0"], 1):
        print(f"  {rank}. {label:<20} {score:.4f}", file=out)


def main(argv: list[str] | None = None) -> int:
    from edgecls import classify

    s = parse(argv)
    if s.name is not None:
        classify.check_run_name(s.name)
    paths, many = classify.collect_images(s.img_path)
    if not many:
        return _single(s, paths[0])
    predictor = load(s)
    if s.save_path:
        folder = classify.output_folder(s.save_path)
        other = classify.prepare_output_folder(folder, s.force)
    else:
        folder, other = classify.claim_run_folder(s.name or classify.run_name(s.img_path)), []
    if other:
        print(
            f"warning: --save-path: {folder} also holds {len(other)} other JSON file(s) (e.g. {other[0].name}), "
            "left as they are; move them out before eval_utils/eval.py --preds reads this folder",
            file=sys.stderr,
        )
    run = classify.classify_many(predictor, paths, folder, s.topk, s.batch_size, s.workers, s.progress)
    for path, error in run.failed:
        print(f"warning: {path}: {error} (skipped)", file=sys.stderr)
    print_table(run.rows, s.show)
    print(
        f"classified {run.done} of {run.total} images ({len(run.failed)} unreadable) -> {folder}/ "
        f"(one JSON per image, {classify.SUMMARY_NAME})"
    )
    if run.done == 0:
        raise UserError(f"none of the {run.total} images could be read; see the warnings above")
    return 0


def _single(s: InferenceCommand, path: str) -> int:
    """One image: its top-K printed and written to --save-path, or into a new run folder."""
    from edgecls import classify

    if s.save_path:
        classify.check_single_output(Path(s.save_path), path, s.force)
    record = classify.predict_one(load(s), path, s.topk)
    if s.save_path:
        save_path = Path(s.save_path)
    else:  # claimed only now: a failed start leaves no folder behind
        save_path = classify.claim_run_folder(s.name or classify.run_name(path)) / classify.SINGLE_NAME
    classify.write_record(record, save_path)
    print_single(record)
    print(f"saved {save_path}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
