"""`edgecls catalog build|add|remove|query`: a product catalog of embeddings, prototypes and an optional HNSW index.

    edgecls catalog build CATALOG_DIR --model M --out CAT [--index hnsw]   CATALOG_DIR/<product>/*.jpg
    edgecls catalog add CAT DIR [DIR ...]        product folders (new products, or more images of one)
    edgecls catalog remove CAT PRODUCT [...]
    edgecls catalog query CAT PATH --save-path OUT [--topk K] [--index exact|hnsw]

Query writes inference.py's prediction records (plus "nearest": the closest catalog images), so
`eval_utils/eval.py --preds OUT` scores them. The work is edgecls.embed.catalog's.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgecls.cli.common import print_table, progress_setting, run_cli, threads_setting
from edgecls.errors import UserError
from edgecls.settings import POSITIONAL, SWITCH, DefaultsHelpFormatter, add_settings, check, flag_names, setting

IO, MODEL, HARDWARE = "input and output", "model", "hardware"


def _model(required: bool, help_: str):
    return setting(None, help_, group=MODEL, required=required, metavar="M")


def _gpu():
    return setting(-1, "CUDA device index; -1 for the CPU", group=HARDWARE, parse=int)


def _batch():
    return setting(32, "images per forward pass", group=HARDWARE, parse=int, at_least=1)


def _workers():
    return setting(None, "decode threads (default: min(4, CPU count))", group=HARDWARE, parse=int)


def _model_def():
    return setting("./models/", "folder of plugin .py files that register backbones", group=MODEL)


@dataclass
class BuildCommand:
    catalog_dir: str | None = setting(None, "a folder with one subfolder of images per product", kind=POSITIONAL,
                                      metavar="CATALOG_DIR")  # fmt: skip
    out: str | None = setting(None, "the catalog folder to write", group=IO, required=True, metavar="CAT")
    force: bool = setting(False, "replace an existing catalog at --out", group=IO, kind=SWITCH)
    index: str = setting("exact", "image search: exact (matmul) only, or also an HNSW graph saved in CAT",
                         group=IO, choices=("exact", "hnsw"))  # fmt: skip
    progress: bool = progress_setting(IO)
    model: str | None = _model(True, "checkpoint (.pth), ONNX file, or a backbone with pretrained weights")
    model_def_path: str | None = _model_def()
    gpu: int = _gpu()
    batch_size: int = _batch()
    workers: int | None = _workers()
    threads: int = threads_setting(HARDWARE)


@dataclass
class AddCommand:
    cat: str | None = setting(None, "the catalog folder", kind=POSITIONAL, metavar="CAT")
    dirs: list = setting([], "product folders to add", cli=False)
    progress: bool = progress_setting(IO)
    model_def_path: str | None = _model_def()
    gpu: int = _gpu()
    batch_size: int = _batch()
    workers: int | None = _workers()
    threads: int = threads_setting(HARDWARE)


@dataclass
class RemoveCommand:
    cat: str | None = setting(None, "the catalog folder", kind=POSITIONAL, metavar="CAT")
    products: list = setting([], "products to remove", cli=False)


@dataclass
class QueryCommand:
    cat: str | None = setting(None, "the catalog folder", kind=POSITIONAL, metavar="CAT")
    img_path: str | None = setting(None, "an image, a folder of images or a quoted glob", kind=POSITIONAL,
                                   metavar="PATH")  # fmt: skip
    save_path: str | None = setting(
        None,
        "JSON file for one image; for many, the folder <save-path minus .json> gets one JSON per image and "
        "summary.csv (what eval_utils/eval.py --preds reads)",
        group=IO,
        required=True,
        metavar="OUT",
    )
    topk: int = setting(5, "products (and nearest catalog images) per query", group=IO, parse=int, at_least=1)
    index: str | None = setting(None, "image search (default: hnsw when the catalog has one, else exact)",
                                group=IO, choices=("exact", "hnsw"))  # fmt: skip
    show: int = setting(10, "print a table of the first N images; 0: none", group=IO, parse=int, at_least=0)
    force: bool = setting(False, "replace an earlier run's records at --save-path", group=IO, kind=SWITCH)
    progress: bool = progress_setting(IO)
    model: str | None = _model(False, "the model to embed queries (default: the catalog's); must be the same weights")
    model_def_path: str | None = _model_def()
    gpu: int = _gpu()
    batch_size: int = _batch()
    workers: int | None = _workers()
    threads: int = threads_setting(HARDWARE)


SUBCOMMANDS = {
    "build": (BuildCommand, "build a catalog folder from CATALOG_DIR/<product>/ images"),
    "add": (AddCommand, "add product folders (or more images of a product), embedding only the new images"),
    "remove": (RemoveCommand, "remove products"),
    "query": (QueryCommand, "top-k products and nearest catalog images per query image"),
}
FLAGS = {**flag_names(*(cls for cls, _ in SUBCOMMANDS.values())), "dirs": "DIR", "products": "PRODUCT"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="edgecls catalog", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{build,add,remove,query}")
    sub.required = True
    for name, (cls, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, allow_abbrev=False, formatter_class=DefaultsHelpFormatter, help=help_,
                           description=help_)  # fmt: skip
        add_settings(p, cls)
        if name == "add":
            p.add_argument("dirs", nargs="+", metavar="DIR", help="product folders (the folder's name is the product)")
        if name == "remove":
            p.add_argument("products", nargs="+", metavar="PRODUCT", help="product names")
    return parser


def _embedder(s, model: str | None, cat=None):
    from edgecls.embed.features import Embedder
    from edgecls.threads import configure

    budget = configure(s.threads or 0, log=print)
    kw = {"device": s.gpu, "model_def_path": s.model_def_path, "threads": budget.intra or None}
    return cat.load_embedder(model, **kw) if cat is not None else Embedder.load(model, **kw)


def _warn_failed(failed) -> None:
    for path, reason in failed:
        print(f"warning: {path}: {reason} (skipped)", file=sys.stderr)


def _embed_kw(s) -> dict:
    return {"batch_size": s.batch_size, "workers": s.workers, "progress": s.progress}


def _build(s: BuildCommand) -> int:
    from edgecls.embed.catalog import build_catalog, check_out

    check_out(Path(s.out), s.force)  # before loading the model
    embedder = _embedder(s, s.model)
    failed: list = []
    cat = build_catalog(
        s.catalog_dir, embedder, s.out, model=s.model, index=s.index, force=s.force, failed=failed, **_embed_kw(s)
    )
    _warn_failed(failed)
    print(
        f"catalog {cat.folder}: {len(cat.products)} products, {len(cat.embeddings.paths)} images "
        f"({len(failed)} unreadable), {cat.dim}-d, index {s.index}"
    )
    return 0


def _add(s: AddCommand) -> int:
    from edgecls.embed.catalog import Catalog, product_dirs

    cat = Catalog.open(s.cat)
    found = product_dirs(s.dirs)
    embedder = _embedder(s, None, cat)
    old = set(cat.products)
    failed: list = []
    added = cat.add(found, embedder, failed=failed, **_embed_kw(s))
    _warn_failed(failed)
    for prod, n in added.items():
        print(f"  {prod}: {n} image(s) {'added to' if prod in old else 'new product'}")
    print(f"catalog {cat.folder}: {len(cat.products)} products, {len(cat.embeddings.paths)} images")
    return 0


def _remove(s: RemoveCommand) -> int:
    from edgecls.embed.catalog import Catalog

    cat = Catalog.open(s.cat)
    cat.remove(list(dict.fromkeys(s.products)))
    print(f"removed {', '.join(s.products)}; catalog {cat.folder}: {len(cat.products)} products, "
          f"{len(cat.embeddings.paths)} images")  # fmt: skip
    return 0


def _query(s: QueryCommand) -> int:
    from edgecls import classify
    from edgecls.embed.catalog import Catalog, is_query_record, query_paths, query_record

    cat = Catalog.open(s.cat)
    paths, many = classify.collect_images(s.img_path)
    index = cat.index(s.index)
    if many:
        folder = classify.output_folder(s.save_path)
        ours = [f for f in sorted(folder.glob("*.json")) if is_query_record(f)] if folder.is_dir() else []
        if ours and not s.force:
            raise UserError(
                f"`save_path`: {folder} already holds {len(ours)} query record(s) from an earlier run; pass `force` "
                "to replace them or choose another `save_path`"
            )
        classify.prepare_output_folder(folder, s.force)
        for f in ours:
            f.unlink()
    else:
        save = Path(s.save_path)
        if not (save.is_file() and is_query_record(save)):
            classify.check_single_output(save, paths[0], s.force)
    embedder = _embedder(s, s.model, cat)
    kw = {"batch_size": s.batch_size, "workers": s.workers}
    if not many:
        [(path, result, reason)] = list(query_paths(cat, embedder, paths, s.topk, index, **kw))
        if reason:
            raise UserError(f"{path}: {reason}")
        record = query_record(path, result)
        classify.write_record(record, Path(s.save_path))
        print(f"{path}:")
        for rank, (score, label) in enumerate(record["0_0"], 1):
            print(f"  {rank}. {label:<20} {score:.4f}")
        print("  nearest catalog images: " + ", ".join(f"{img} ({sc:.3f})" for sc, _, img in record["nearest"][:3]))
        print(f"saved {s.save_path}")
        return 0
    from edgecls.progress import progress_bar

    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    used: set[str] = set()
    rows, failed = [], []
    with progress_bar(len(paths), s.progress) as bar:
        for path, result, reason in query_paths(cat, embedder, paths, s.topk, index, **kw):
            bar.update(1)
            if reason:
                failed.append((path, reason))
                rows.append({"img_path": path, "top1_label": "", "top1_score": "", "json_file": "", "error": reason})
                continue
            record = query_record(path, result)
            name = classify.json_name_for(path, root, used)
            classify.write_record(record, folder / name)
            score, label = record["0_0"][0]
            rows.append({"img_path": path, "top1_label": label, "top1_score": f"{score:.6f}", "json_file": name})
    classify.write_summary(rows, folder / classify.SUMMARY_NAME)
    _warn_failed(failed)
    print_table(rows, s.show)
    print(f"queried {len(paths) - len(failed)} of {len(paths)} images ({len(failed)} unreadable), index "
          f"{index.kind} -> {folder}/ (one JSON per image, {classify.SUMMARY_NAME})")  # fmt: skip
    if len(failed) == len(paths):
        raise UserError(f"none of the {len(paths)} images could be read; see the warnings above")
    return 0


COMMANDS = {"build": _build, "add": _add, "remove": _remove, "query": _query}


def main(argv: list[str] | None = None) -> int:
    values = vars(build_parser().parse_args(argv))
    command = values.pop("command")
    settings = SUBCOMMANDS[command][0](**values)
    check(settings)
    return COMMANDS[command](settings)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
