"""`eval_utils/eval.py`: top-K accuracy, precision/recall/F1, confusion matrix.

Dataset mode: run a checkpoint or ONNX file over DATA_DIR/val/<class>/ (or --split).
End-to-end mode: compare a folder of prediction JSONs (inference.py's output,
`{"img_path": p, "0_0": [[score, label], ...]}`) with ground truth `{image_path: label}`.
Both append a block to eval_results.txt and write eval_results.json (figures and per-image predictions),
confusion_matrix.png (counts), confusion_matrix_normalized.png and per_class.png into --save-dir (default: a
new runs/eval/<date-time>); --save-misclassified DIR adds DIR/misclassified.png.
The flags are generated from EvalCommand; the work is edgecls.evaluation's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from edgecls.cli.common import progress_setting, run_cli, threads_setting
from edgecls.data.presets import PRESETS, RESIZE_POLICIES
from edgecls.errors import UserError
from edgecls.settings import (
    build_parser,
    check,
    flag_names,
    parse_command_line,
    parse_size,
    render_fields,
    setting,
)

DATASET, E2E, COMMON = "dataset mode", "end-to-end mode", "common"


@dataclass
class EvalCommand:
    # ---- dataset mode
    snapshot: str | None = setting(
        None, "edgecls checkpoint, or a bare state_dict with --backbone", group=DATASET, metavar="PTH"
    )
    onnx: str | None = setting(None, "ONNX model (onnxruntime) instead of --snapshot", group=DATASET, metavar="ONNX")
    data_dir: str | None = setting(
        None,
        "dataset folder holding the split (or the split folder itself), or a shard folder (edgecls data pack)",
        group=DATASET,
    )
    split: str = setting("val", "subfolder of --data-dir to evaluate", group=DATASET)
    backbone: str | None = setting(
        None, "backbone for a bare state_dict (default: read from the checkpoint)", group=DATASET
    )
    model_def_path: str | None = setting(
        "./models/", "folder of plugin .py files that register backbones", group=DATASET
    )
    input_size: tuple[int, int] | None = setting(
        None, "override the stored input size", group=DATASET, parse=parse_size, metavar="HxW"
    )
    preprocess: str | None = setting(
        None, "override the stored normalization", group=DATASET, choices=tuple(sorted(PRESETS))
    )
    resize: str | None = setting(None, "override the stored resize policy", group=DATASET, choices=RESIZE_POLICIES)
    # ---- end-to-end mode
    preds: str | None = setting(None, "folder of per-image prediction JSON files", group=E2E, metavar="FOLDER")
    gts: str | None = setting(None, "ground truth {image_path: label (name or id)}", group=E2E, metavar="FILE.json")
    # ---- common
    class_id_path: str | None = setting(
        None,
        'class map {"0": name, ...} (dataset mode: overrides the model\'s names; end-to-end: '
        "fixes the class list and order, default: the labels found, sorted)",
        group=COMMON,
        flags=("--class_id_path", "--class-id-path"),
    )
    topk: int = setting(
        5,
        "report top-1 .. top-K accuracy (end-to-end: at most the number of labels each prediction file lists)",
        group=COMMON,
        parse=int,
        at_least=1,
    )
    save_dir: str | None = setting(
        None,
        "folder for eval_results.txt (appended), eval_results.json (figures and per-image predictions), "
        "confusion_matrix.png, confusion_matrix_normalized.png and per_class.png (default: a new "
        "runs/eval/<date-time>)",
        group=COMMON,
    )
    save_misclassified: str | None = setting(
        None,
        "also write DIR/misclassified.png: the most confident mistakes (up to 25) with true class, prediction, score",
        group=COMMON,
        metavar="DIR",
    )
    gpu: int = setting(-1, "CUDA device index; -1 for the CPU", group=COMMON, parse=int)
    batch_size: int = setting(32, "images per forward pass", group=COMMON, parse=int)
    workers: int | None = setting(None, "decode threads (default: min(4, CPU count))", group=COMMON, parse=int)
    threads: int = threads_setting(COMMON)
    progress: bool = progress_setting(COMMON)

    @property
    def end_to_end(self) -> bool:
        return bool(self.preds or self.gts)

    def check(self) -> None:
        """The declared rules, then one mode with everything it needs."""
        check(self)
        from edgecls.evaluation import check_save_dir

        for what in ("save_dir", "save_misclassified"):
            if getattr(self, what) is not None:
                check_save_dir(getattr(self, what), what)
        dataset = bool(self.snapshot or self.onnx or self.data_dir)
        if self.end_to_end and dataset:
            raise UserError("choose one mode: `snapshot`/`onnx` with `data_dir`, or `preds` with `gts`")
        if self.end_to_end and not (self.preds and self.gts):
            raise UserError("end-to-end mode needs both `preds` FOLDER and `gts` FILE.json")
        if dataset and not self.data_dir:
            raise UserError("dataset mode needs `data_dir` DATASET (its val/ split is evaluated)")
        if not (self.end_to_end or dataset):
            raise UserError("nothing to evaluate: give `snapshot`/`onnx` with `data_dir`, or `preds` with `gts`")


FLAGS = flag_names(EvalCommand)


def get_args_parser():
    return build_parser(
        EvalCommand,
        prog="eval_utils/eval.py",
        description="Evaluate a model on a dataset split (--snapshot/--onnx + --data-dir), or prediction files "
        "against ground truth (--preds + --gts).",
    )


def parse(argv: list[str] | None) -> EvalCommand:
    values, _ = parse_command_line(EvalCommand, get_args_parser(), argv)
    return EvalCommand(**values)


def warn(message: str) -> None:
    print(f"warning: {render_fields(message, FLAGS)}", file=sys.stderr)


def run_mode(s: EvalCommand) -> dict:
    from edgecls import evaluation
    from edgecls.predict import predictor_for

    if s.end_to_end:
        result = evaluation.run_end_to_end_mode(s.preds, s.gts, s.class_id_path)
        for path in result["problems"]["missing_prediction"][: evaluation.LIST_LIMIT]:
            warn(f"no prediction for ground-truth image {path}")
        for path in result["problems"]["missing_ground_truth"][: evaluation.LIST_LIMIT]:
            warn(f"no ground truth for predicted image {path}")
        return result
    predictor = predictor_for(s, log=print)
    return evaluation.run_dataset_mode(predictor, s.data_dir, s.split, s.batch_size, s.workers, s.progress)


def main(argv: list[str] | None = None) -> int:
    from edgecls.evaluation import classification_report, default_save_dir, reported_topk, write_outputs

    s = parse(argv)
    s.check()
    result = run_mode(s)
    k, note = reported_topk(s.topk, result)
    if note:
        warn(note)
    report = classification_report(result["y_true"], result["scores"], len(result["classes"]), topk=k)
    if report["num_images"] == 0:
        raise UserError("no image could be evaluated; see the unreadable files listed above")
    out, text, files = write_outputs(result, report, s.save_dir or default_save_dir(), s.save_misclassified)
    print(text, end="")
    print(f"appended {files[0]}; wrote {', '.join(str(f) for f in files[1:])}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
