"""`edgecls retrieval E [--k 5]`: leave-one-out retrieval metrics of labelled embeddings.

Each embedding queries all the others by cosine similarity. P@1, P@5: share of same-label items among the 1 (5)
nearest. mAP@10: mean over queries of sum_{i<=10} P@i * rel_i / min(10, R), R the query's relevant items.
kNN: majority label of the k nearest (ties to the nearest) equals the query's. Classes of one image are left out.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from edgecls.cli.common import run_cli
from edgecls.settings import POSITIONAL, SWITCH, build_parser, check, flag_names, parse_command_line, setting


@dataclass
class RetrievalCommand:
    embeddings: str | None = setting(None, "labelled embeddings written by edgecls embed (E, E.npy or E.json)",
                                     kind=POSITIONAL, metavar="E")  # fmt: skip
    k: int = setting(5, "neighbours that vote in the kNN accuracy", parse=int, at_least=1)
    json: str | None = setting(None, "also write the metrics to this JSON file", metavar="OUT")
    force: bool = setting(False, "replace an existing --json file", kind=SWITCH)


FLAGS = flag_names(RetrievalCommand)


def get_args_parser():
    return build_parser(RetrievalCommand, prog="edgecls retrieval", description=__doc__.splitlines()[0], config=False)


def main(argv: list[str] | None = None) -> int:
    import json
    from pathlib import Path

    from edgecls.atomic import atomic_write_text
    from edgecls.embed.retrieval import embeddings_retrieval
    from edgecls.embed.store import Embeddings
    from edgecls.errors import UserError

    values, _ = parse_command_line(RetrievalCommand, get_args_parser(), argv)
    s = RetrievalCommand(**values)
    check(s)
    if s.json and Path(s.json).exists() and not s.force:
        raise UserError(f"`json` {s.json}: exists; pass `force` to replace it or choose another name")
    emb = Embeddings.load(s.embeddings)
    m = embeddings_retrieval(emb, k=s.k)
    left = [f"{m.skipped} in one-image classes"] if m.skipped else []
    left += [f"{m.unlabelled} unlabelled"] if m.unlabelled else []
    print(f"{m.queries} queries (leave-one-out, cosine){' - left out: ' + ', '.join(left) if left else ''}")
    print(f"P@1 {m.p_at_1:.4f}  P@5 {m.p_at_5:.4f}  mAP@10 {m.map_at_10:.4f}  kNN@{m.k} top-1 {m.knn_accuracy:.4f}")
    if s.json:
        atomic_write_text(json.dumps({"embeddings": str(s.embeddings), **m.to_dict()}, indent=1) + "\n", s.json)
        print(f"-> {s.json}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
