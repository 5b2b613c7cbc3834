"""`inference.py --img-path PATH`: top-K classes per image from a checkpoint or an ONNX file.

One image: prints the top-K and writes `--save-path` (inference_result.json) as
`{"img_path": ..., "0_0": [[score, label], ...]}`. A folder or a glob: one such JSON per
image in a folder (the `--save-path` without `.json`), which is exactly what
`eval_utils/eval.py --preds` reads, plus `summary.csv`.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from pathlib import Path

from edgecls.atomic import atomic_write_text
from edgecls.cli.common import (
    DefaultsHelpFormatter,
    add_config_flag,
    parse_size,
    parse_with_config,
    require_at_least,
    run_cli,
)
from edgecls.data.images import has_image_extension, is_hidden
from edgecls.data.presets import PRESETS, RESIZE_POLICIES, Preprocess
from edgecls.errors import UserError

SUMMARY_NAME = "summary.csv"
SUMMARY_FIELDS = ["img_path", "top1_label", "top1_score", "json_file", "error"]
MAX_PREDICTION_BYTES = 16 * 2**20  # a larger .json is not one of our records (all of 100k classes is ~4 MB)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="inference.py",
        description="Classify one image, a folder (recursively) or a glob with a checkpoint or an ONNX file.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_flag(p)
    g = p.add_argument_group("input and output")
    g.add_argument(
        "--img-path",
        required=True,
        help="an image file, a folder of images, a quoted glob ('imgs/*.jpg'), or a shard folder (or one .tar of it)",
    )
    g.add_argument(
        "--save-path",
        default="inference_result.json",
        help="JSON file for one image; for many images the folder <save-path minus .json> gets one JSON "
        "per image and summary.csv",
    )
    g.add_argument("--topk", type=int, default=5, help="classes listed per image (capped at the class count)")
    g.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --save-path file, or the prediction files an earlier run left in the "
        "output folder (other files are kept)",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="hide the progress bar (shown only when stderr is a terminal)",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--snapshot", default=None, metavar="PTH", help="edgecls checkpoint, or a bare state_dict with --backbone"
    )
    g.add_argument(
        "--onnx", default=None, metavar="ONNX", help="ONNX model to run with onnxruntime instead of --snapshot"
    )
    g.add_argument(
        "--backbone", default=None, help="backbone for a bare state_dict (default: read from the checkpoint)"
    )
    g.add_argument("--model-def-path", default="./models/", help="folder of plugin .py files that register backbones")
    g.add_argument(
        "--class_id_path",
        "--class-id-path",
        dest="class_id_path",
        default=None,
        help='class map {"0": name, ...} overriding the names in the model file',
    )

    g = p.add_argument_group("preprocessing overrides (default: what the model file stores)")
    g.add_argument("--input-size", type=parse_size, default=None, metavar="HxW", help="model input, e.g. 224 or 56x32")
    g.add_argument("--preprocess", default=None, choices=sorted(PRESETS), help="normalization preset")
    g.add_argument("--resize", default=None, choices=RESIZE_POLICIES, help="resize policy")

    g = p.add_argument_group("hardware")
    g.add_argument("--gpu", type=int, default=-1, help="CUDA device index; -1 for the CPU")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    g.add_argument("--workers", type=int, default=None, help="decode threads (default: min(4, CPU count))")
    g.add_argument("--threads", type=int, default=None, help="model compute threads (default: the library's)")
    return p


# ----------------------------------------------------------------------------- inputs
def collect_images(spec: str) -> tuple[list[str], bool]:
    """(image paths, many) for a file, a folder (recursive, hidden entries skipped) or a glob; a shard folder
    (edgecls data pack) or one of its .tar files: the Members of its images."""
    from edgecls.data.shards.index import shard_sources

    members = shard_sources(spec)
    if members is not None:
        return members, True
    path = Path(spec)
    if path.is_file():
        return [str(path)], False
    if path.is_dir():
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            found += [
                os.path.join(dirpath, f) for f in sorted(filenames) if not is_hidden(f) and has_image_extension(f)
            ]
        if not found:
            raise UserError(f"--img-path {spec}: no image files (.jpg .png .bmp .webp .tif) in this folder")
        return found, True
    if glob.has_magic(spec):
        found = sorted(
            f
            for f in glob.glob(spec, recursive=True)
            if os.path.isfile(f) and has_image_extension(f) and not is_hidden(os.path.basename(f))
        )
        if not found:
            raise UserError(f"--img-path {spec}: the pattern matches no image files")
        return found, True
    raise UserError(f"--img-path {spec}: no such file or folder")


def build_preprocess_override(args, base: Preprocess | None) -> Preprocess | None:
    if not (args.input_size or args.preprocess or args.resize):
        return None
    d = base.to_dict() if base else Preprocess().to_dict()
    if args.input_size:
        d["input_size"] = list(args.input_size)
    if args.preprocess:
        d["preset"], d["mean"], d["std"] = args.preprocess, [], []
    if args.resize:
        d["resize"] = args.resize
    return Preprocess.from_dict(d)


def load_predictor(args):
    """The Predictor for --snapshot or --onnx, with the CLI's overrides applied."""
    from edgecls.data.classmap import read_class_map
    from edgecls.predict import Predictor, check_input_size

    if bool(args.snapshot) == bool(args.onnx):
        raise UserError("give exactly one model: --snapshot CHECKPOINT.pth or --onnx MODEL.onnx")
    names = read_class_map(args.class_id_path) if args.class_id_path else None
    kw = dict(
        device=args.gpu,
        backbone=args.backbone,
        model_def_path=args.model_def_path,
        class_names=names,
        num_threads=getattr(args, "threads", None),
    )
    override = build_preprocess_override(args, None)
    try:
        predictor = Predictor.from_path(args.snapshot or args.onnx, **kw)
    except UserError:
        if override is None or not args.onnx or names is None:
            raise
        # an ONNX file without edgecls metadata: the flags, the class map and the graph say everything
        return Predictor.from_path(args.onnx, preprocess=override, input_size_from_graph=not args.input_size, **kw)
    if override is not None:  # flags change only what they name; the rest stays as stored
        predictor.preprocess = build_preprocess_override(args, predictor.preprocess)
        check_input_size(predictor.path, predictor.fixed_input_size, predictor.preprocess.input_size)
    return predictor


# ---------------------------------------------------------------------------- outputs
def prediction_record(img_path: str, ranked: list[tuple[float, str]]) -> dict:
    return {"img_path": img_path, "0_0": [[score, label] for score, label in ranked]}


def output_folder(save_path: str) -> Path:
    p = Path(save_path)
    return p.with_suffix("") if p.suffix.lower() == ".json" else p


def check_single_output(save_path: Path, img_path: str, force: bool) -> None:
    """Never write over the input image; replace an earlier prediction record freely (a rerun), any other
    existing file only with --force."""
    if not save_path.exists() or save_path.is_dir():  # a folder is the writer's to refuse
        return
    if os.path.samefile(save_path, img_path):
        raise UserError(f"--save-path {save_path}: this is the input image; choose another --save-path")
    if not force and not is_prediction_file(save_path):
        raise UserError(
            f"--save-path {save_path}: already exists and is not a prediction record; pass --force "
            "to replace it or choose another --save-path"
        )


def is_prediction_file(path: Path) -> bool:
    """A JSON file holding one prediction record as inference.py writes it (docs/ARCHITECTURE.md)."""
    try:
        if path.stat().st_size > MAX_PREDICTION_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"img_path", "0_0"} and isinstance(data["0_0"], list)


def is_inference_summary(path: Path) -> bool:
    """summary.csv as inference.py writes it (a training run's summary.csv has other columns)."""
    if path.name != SUMMARY_NAME:
        return False
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), None) == SUMMARY_FIELDS
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def prepare_output_folder(folder: Path, force: bool) -> None:
    """Refuse to mix with an earlier run's files (eval would read them) unless --force removes them.

    Only prediction records and summary.csv count as an earlier run's; other files are never touched.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--save-path: {folder} exists and is not a folder; choose another --save-path")
    if not folder.is_dir():
        folder.mkdir(parents=True)
        return
    entries = [f for f in sorted(folder.iterdir()) if f.is_file()]
    summary = folder / SUMMARY_NAME
    if summary.exists() and not is_inference_summary(summary):
        raise UserError(
            f"--save-path: {summary} is not an inference summary (a training run's?) and would be "
            "replaced; choose another --save-path"
        )
    old = [f for f in entries if f == summary or (f.suffix == ".json" and is_prediction_file(f))]  # summary: ours
    other = [f for f in entries if f.suffix == ".json" and f not in old]
    if old and not force:
        raise UserError(
            f"--save-path: {folder} already holds {len(old)} prediction file(s) from an earlier run; "
            "pass --force to replace them or choose another --save-path"
        )
    for f in old:
        f.unlink()
    if other:
        print(
            f"warning: --save-path: {folder} also holds {len(other)} other JSON file(s) (e.g. {other[0].name}), "
            "left as they are; move them out before eval_utils/eval.py --preds reads this folder",
            file=sys.stderr,
        )


def json_name_for(img_path: str, root: str, used: set[str]) -> str:
    """A unique, readable file name: the image's path under the input root with '/' -> '__'."""
    rel = os.path.relpath(os.path.abspath(img_path), root)
    base = rel.replace(os.sep, "__").replace("/", "__").lstrip(".") or "image"
    name, n = f"{base}.json", 1
    while name in used:
        n += 1
        name = f"{base}.{n}.json"
    used.add(name)
    return name


def progress_bar(total: int, enabled: bool, desc: str = "classify"):
    """A tqdm bar on stderr, shown only when asked for and stderr is a terminal (not a pipe or a file)."""
    from tqdm import tqdm

    shown = enabled and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not shown, file=sys.stderr, dynamic_ncols=True)


def print_single(record: dict, out=sys.stdout) -> None:
    print(f"{record['img_path']}:", file=out)
    for rank, (score, label) in enumerate(record["0_0"], 1):
        print(f"  {rank}. {label:<20} {score:.4f}", file=out)


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_with_config(get_args_parser(), argv)
    require_at_least(args, {"topk": 1, "batch_size": 1})
    paths, many = collect_images(args.img_path)
    if not many:
        check_single_output(Path(args.save_path), paths[0], args.force)
    predictor = load_predictor(args)

    if not many:
        [(path, probs, error)] = list(predictor.predict_paths(paths, batch_size=1, workers=1))
        if error:
            raise UserError(f"{path}: {error}")
        record = prediction_record(path, predictor.topk(probs, args.topk))
        atomic_write_text(json.dumps(record, indent=2) + "\n", Path(args.save_path))
        print_single(record)
        print(f"saved {args.save_path}")
        return 0

    folder = output_folder(args.save_path)
    prepare_output_folder(folder, args.force)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(str(p))) for p in paths])
    used: set[str] = set()
    rows, failed = [], []
    with progress_bar(len(paths), args.progress) as bar:
        for path, probs, error in predictor.predict_paths(paths, batch_size=args.batch_size, workers=args.workers):
            bar.update(1)
            if error:
                failed.append((path, error))
                rows.append({"img_path": path, "top1_label": "", "top1_score": "", "json_file": "", "error": error})
                continue
            record = prediction_record(path, predictor.topk(probs, args.topk))
            name = json_name_for(path, root, used)
            atomic_write_text(json.dumps(record) + "\n", folder / name)
            score, label = record["0_0"][0]
            rows.append(
                {"img_path": path, "top1_label": label, "top1_score": f"{score:.6f}", "json_file": name, "error": ""}
            )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), folder / SUMMARY_NAME)
    for path, error in failed:
        print(f"warning: {path}: {error} (skipped)", file=sys.stderr)
    done = len(paths) - len(failed)
    print(
        f"classified {done} of {len(paths)} images ({len(failed)} unreadable) -> {folder}/ "
        f"(one JSON per image, {SUMMARY_NAME})"
    )
    if done == 0:
        raise UserError(f"none of the {len(paths)} images could be read; see the warnings above")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
