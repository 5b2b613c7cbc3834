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
from edgecls.embed.few_shot import parse_shots
from edgecls.errors import UserError
from edgecls.settings import (
    SWITCH,
    build_parser,
    check,
    flag_names,
    parse_command_line,
    parse_size,
    render_fields,
    setting,
)

DATASET, E2E, FEW, COMMON = "dataset mode", "end-to-end mode", "few-shot mode", "common"


@dataclass
class EvalCommand:
    # ---- dataset mode
    snapshot: str | None = setting(
        None, "edgecls checkpoint, or a bare state_dict with --backbone", group=DATASET, metavar="PTH"
    )
    onnx: str | None = setting(None, "ONNX model (onnxruntime) instead of --snapshot", group=DATASET, metavar="ONNX")
    data_dir: str | None = setting(
        None,
        "dataset folder holding the split (or the split folder itself), or a shard folder (edgecls data pack); "
        "with --few-shot: a folder of class subfolders (DIR/<class>/ or DIR/<split>/<class>/)",
        group=DATASET,
        flags=("--data-dir", "--data"),
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
    # ---- few-shot mode (edgecls/embed/few_shot.py)
    few_shot: bool = setting(
        False,
        "few-shot accuracy: episodes drawn from the classes of --data-dir, each image embedded once (features "
        "before the head) by --snapshot, --onnx or --backbone NAME --pretrained; nearest prototype by cosine; "
        "mean accuracy and 95%% interval (1.96 std / sqrt(episodes)) per --k-shot",
        group=FEW,
        kind=SWITCH,
    )
    pretrained: bool = setting(
        False, "with --few-shot: the --backbone's installed pretrained weights (no checkpoint)", group=FEW,
        kind=SWITCH,
    )  # fmt: skip
    n_way: int = setting(5, "classes per episode", group=FEW, parse=int, at_least=2)
    k_shot: list[int] = setting(
        [1, 5], "support images per class: one figure per value, e.g. 1,5", group=FEW, parse=parse_shots,
        metavar="K[,K...]",
    )  # fmt: skip
    query: int = setting(15, "query images per class and episode", group=FEW, parse=int, at_least=1)
    episodes: int = setting(600, "episodes per k-shot figure", group=FEW, parse=int, at_least=1)
    seed: int = setting(0, "seed of the episodes (each k-shot draws its own from seed + k)", group=FEW, parse=int)
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
        if self.few_shot:
            self.check_few_shot()
            return
        if self.pretrained:
            raise UserError("`pretrained` applies to `few_shot` mode only")
        dataset = bool(self.snapshot or self.onnx or self.data_dir)
        if self.end_to_end and dataset:
            raise UserError("choose one mode: `snapshot`/`onnx` with `data_dir`, or `preds` with `gts`")
        if self.end_to_end and not (self.preds and self.gts):
            raise UserError("end-to-end mode needs both `preds` FOLDER and `gts` FILE.json")
        if dataset and not self.data_dir:
            raise UserError("dataset mode needs `data_dir` DATASET (its val/ split is evaluated)")
        if not (self.end_to_end or dataset):
            raise UserError("nothing to evaluate: give `snapshot`/`onnx` with `data_dir`, or `preds` with `gts`")

    def check_few_shot(self) -> None:
        if self.end_to_end:
            raise UserError("`few_shot` evaluates a model on `data_dir`; leave out `preds`/`gts`")
        models = [what for what in ("snapshot", "onnx") if getattr(self, what)] + (["pretrained"] * self.pretrained)
        if len(models) != 1:
            raise UserError("`few_shot` needs one model: `snapshot` PTH, `onnx` FILE or `backbone` NAME `pretrained`")
        if self.pretrained and not self.backbone:
            raise UserError("`pretrained` needs `backbone` NAME (a backbone with installed weights)")
        if not self.data_dir:
            raise UserError("`few_shot` needs `data_dir` DIR: a folder of class subfolders the model never saw")

    @property
    def model(self) -> str:
        return self.snapshot or self.onnx or self.backbone


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


def run_few_shot(s: EvalCommand) -> int:
    """Embed every image of `data_dir` once, then the episodes; print the figures, write few_shot.json."""
    import json
    from pathlib import Path

    from edgecls.atomic import atomic_write_text
    from edgecls.data.layout import walk_files
    from edgecls.embed.embed import embed_images
    from edgecls.embed.features import Embedder, describe
    from edgecls.embed.few_shot import few_shot_report, format_report
    from edgecls.evaluation import default_save_dir

    root = Path(s.data_dir)
    if not root.is_dir():
        raise UserError(f"`data_dir` {root}: no such folder")
    paths = walk_files(str(root), images_only=True)
    if not paths:
        raise UserError(f"`data_dir` {root}: no image files in its class subfolders")
    embedder = Embedder.load(s.model, device=s.gpu,
                             model_def_path=s.model_def_path, threads=s.threads or None)  # fmt: skip
    failed: list = []
    emb = embed_images(embedder, paths, root=root, batch_size=s.batch_size, workers=s.workers,
                       progress=s.progress, failed=failed)  # fmt: skip
    for path, reason in failed[:10]:
        warn(f"skipped unreadable {path}: {reason}")
    labelled = [i for i, lab in enumerate(emb.labels) if lab is not None]
    report = few_shot_report(
        emb.vectors[labelled], [emb.labels[i] for i in labelled], n_way=s.n_way, shots=s.k_shot, query=s.query,
        episodes=s.episodes, seed=s.seed, where=str(root),
    )  # fmt: skip
    report["model"] = embedder.identity
    text = format_report(report, describe(embedder.identity))
    out = Path(s.save_dir or default_save_dir())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(report, indent=2) + "\n", out / "few_shot.json")
    print(text, end="")
    print(f"wrote {out / 'few_shot.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edgecls.evaluation import classification_report, default_save_dir, reported_topk, write_outputs

    s = parse(argv)
    s.check()
    if s.few_shot:
        return run_few_shot(s)
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
