"""The end of training (as Ultralytics does it): best.pth evaluated on val, and on test/ when the dataset has one.

Per split the run folder gets SPLIT_results.json (eval_results.json's figures and per-image predictions),
SPLIT_confusion_matrix.png (row-normalised), SPLIT_per_class.png (precision / recall / F1) and
SPLIT_misclassified.png (the most confident mistakes); edgecls.evaluation makes them, from the same
Predictor eval_utils/eval.py uses, so the figures are eval's. Rank 0 only; `final_eval` False turns it off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.engine.callbacks import Callback
from edgecls.errors import UserError

SPLITS = ("val", "test")


@dataclass
class SplitEvaluation:
    split: str
    report: dict  # edgecls.evaluation.classification_report's figures
    files: list[Path] = field(default_factory=list)


class FinalEvaluation(Callback):
    """Evaluates the run's best.pth once training ends; FinalTable prints what it found (`results`)."""

    def __init__(self):
        self.results: dict[str, SplitEvaluation] = {}
        self.ran = False

    def on_train_end(self, run, result) -> None:
        best = run.recorder.path("best.pth")
        if not (run.is_main and run.recorder.enabled and run.cfg.final_eval and best.is_file()):
            return
        from edgecls.evaluation import has_split
        from edgecls.predict import Predictor

        started = time.perf_counter()
        predictor = Predictor.from_path(best, device=str(run.device), model_def_path=run.cfg.model_def_path)
        for split in SPLITS:
            if split != "val" and not has_split(run.cfg.data, split):
                continue
            try:
                self.results[split] = evaluate_split(run, predictor, split)
            except UserError as exc:  # e.g. a test/ class the model lacks: the trained run stays usable
                run.log(f"warning: final evaluation of {split}/ skipped: {exc}")
        self.ran = True
        run.recorder.update_timings({"final_eval_s": round(time.perf_counter() - started, 3)})


def evaluate_split(run, predictor, split: str) -> SplitEvaluation:
    """eval's dataset mode on one split of the run's data, its figures at the run's K, written to the run folder."""
    from edgecls import evaluation

    cfg = run.cfg
    result = evaluation.run_dataset_mode(predictor, cfg.data, split, batch_size=cfg.batch_size,
                                         workers=max(1, cfg.workers))  # fmt: skip
    report = evaluation.classification_report(result["y_true"], result["scores"], len(result["classes"]), run.topk)
    title = evaluation.figure_title(cfg.model_name or cfg.backbone, split, report)
    files = evaluation.write_split_outputs(result, report, run.recorder.run_dir, split, title)
    return SplitEvaluation(split, report, files)
