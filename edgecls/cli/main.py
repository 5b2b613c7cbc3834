"""`edgecls <command> ...`: one console script over the per-command modules."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("edgecls.cli.train", "train a classifier on a folder dataset"),
    "infer": ("edgecls.cli.inference", "top-K classes for images (checkpoint or ONNX)"),
    "eval": ("edgecls.cli.eval", "accuracy, precision/recall/F1, confusion matrix"),
    "export": ("edgecls.cli.export", "checkpoint -> verified, NPU-ready ONNX (+ INT8)"),
    "serve": ("edgecls.cli.serve", "HTTP API and web page for a model"),
    "data": ("edgecls.cli.data", "dataset tools: split, verify, augment, import, stats, pack"),
    "lr-find": ("edgecls.cli.lr_find", "learning-rate range test: a suggested --lr and its chart"),
    "embed": ("edgecls.cli.embed", "pooled features of images (checkpoint, ONNX or pretrained backbone)"),
    "catalog": ("edgecls.cli.catalog", "product catalog: build, add, remove, query (exact or HNSW search)"),
    "cluster": ("edgecls.cli.cluster", "cluster embeddings: assignments, ARI/AMI/NMI, a PCA scatter"),
    "retrieval": ("edgecls.cli.retrieval", "leave-one-out retrieval metrics of labelled embeddings: P@1, P@5, mAP@10"),
    "tune": ("edgecls.cli.tune", "hyperparameter search (Optuna), resumable, one machine or many"),
    "models": ("edgecls.cli.models", "list the registered backbones"),
    "demo-data": ("edgecls.cli.demo", "write the bundled demo digits as an image folder"),
}


def usage() -> str:
    lines = ["usage: edgecls <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `edgecls <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).cli(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
