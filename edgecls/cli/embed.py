"""`edgecls embed --model M DIR --out E`: pooled pre-head features, L2-normalised, as E.npy + E.json.

M is an edgecls checkpoint, an ONNX file (a classifier export or a `pytorch2onnx.py --embedding` one), or
a backbone name with installed pretrained weights (`efficientnet-lite0`: embeddings with no training).
Labels come from class folders (DIR/<class>/ or DIR/<split>/<class>/) when the images sit in them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from edgecls.cli.common import progress_setting, run_cli, threads_setting
from edgecls.settings import POSITIONAL, SWITCH, build_parser, check, flag_names, parse_command_line, setting

IO, MODEL, HARDWARE = "input and output", "model", "hardware"


@dataclass
class EmbedCommand:
    dir: str | None = setting(
        None,
        "an image, a folder of images (class folders give labels) or a quoted glob",
        kind=POSITIONAL,
        metavar="DIR",
        required=True,
    )
    out: str | None = setting(None, "writes E.npy (N x D, unit rows) and E.json (paths, labels, model)", group=IO,
                              required=True, metavar="E")  # fmt: skip
    force: bool = setting(False, "replace existing E.npy / E.json", group=IO, kind=SWITCH)
    progress: bool = progress_setting(IO)
    model: str | None = setting(
        None,
        "checkpoint (.pth), ONNX file, or a backbone name with pretrained weights (e.g. efficientnet-lite0)",
        group=MODEL,
        required=True,
        metavar="M",
    )
    model_def_path: str | None = setting("./models/", "folder of plugin .py files that register backbones", group=MODEL)
    gpu: int = setting(-1, "CUDA device index; -1 for the CPU", group=HARDWARE, parse=int)
    batch_size: int = setting(32, "images per forward pass", group=HARDWARE, parse=int, at_least=1)
    workers: int | None = setting(None, "decode threads (default: min(4, CPU count))", group=HARDWARE, parse=int)
    threads: int = threads_setting(HARDWARE)


FLAGS = flag_names(EmbedCommand)


def get_args_parser():
    return build_parser(EmbedCommand, prog="edgecls embed", description=__doc__.splitlines()[0], config=False)


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from edgecls.classify import collect_images
    from edgecls.embed.embed import embed_images
    from edgecls.embed.features import Embedder
    from edgecls.embed.store import embedding_paths
    from edgecls.errors import UserError
    from edgecls.threads import configure

    values, _ = parse_command_line(EmbedCommand, get_args_parser(), argv)
    s = EmbedCommand(**values)
    check(s)
    npy, side = embedding_paths(s.out)
    if not s.force and (npy.exists() or side.exists()):
        raise UserError(f"`out` {npy}: embeddings exist there; pass `force` to replace them or choose another name")
    paths, _ = collect_images(s.dir)
    budget = configure(s.threads or 0, log=print)
    embedder = Embedder.load(s.model, device=s.gpu, model_def_path=s.model_def_path, threads=budget.intra or None)
    failed: list = []
    root = Path(s.dir) if Path(s.dir).is_dir() else None
    emb = embed_images(
        embedder, paths, root=root, batch_size=s.batch_size, workers=s.workers, progress=s.progress, failed=failed
    )
    for path, reason in failed:
        print(f"warning: {path}: {reason} (skipped)", file=sys.stderr)
    emb.save(s.out, force=s.force)
    labelled = sum(lab is not None for lab in emb.labels)
    print(
        f"embedded {len(emb.paths)} of {len(paths)} images ({len(failed)} unreadable), {emb.dim}-d, "
        f"{labelled} labelled in {len(emb.classes)} classes -> {npy} + {side.name}"
    )
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
