"""`edgecls cluster E --method kmeans --k N`: cluster embeddings; clusters.csv, ARI/AMI/NMI, a PCA scatter.

E comes from `edgecls embed`. With labels (class folders), the adjusted Rand index, adjusted mutual information
and NMI against them are printed and written as cluster_metrics.json. Results go to E_clusters/ by default.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from edgecls.cli.common import run_cli
from edgecls.embed.cluster import METHODS
from edgecls.settings import POSITIONAL, SWITCH, build_parser, check, flag_names, parse_command_line, setting


@dataclass
class ClusterCommand:
    embeddings: str | None = setting(None, "embeddings written by edgecls embed (E, E.npy or E.json)",
                                     kind=POSITIONAL, metavar="E")  # fmt: skip
    method: str = setting("kmeans", f"clustering algorithm (scikit-learn): {' | '.join(METHODS)}", metavar="NAME")
    k: int = setting(None, "number of clusters (2 .. number of embeddings)", parse=int, required=True, metavar="N")
    out: str | None = setting(None, "folder for clusters.csv, cluster_metrics.json, clusters.png (default: E_clusters)",
                              metavar="DIR")  # fmt: skip
    seed: int = setting(0, "random seed of the k-means initialisation", parse=int)
    force: bool = setting(False, "replace results already in the output folder", kind=SWITCH)


FLAGS = flag_names(ClusterCommand)


def get_args_parser():
    return build_parser(ClusterCommand, prog="edgecls cluster", description=__doc__.splitlines()[0], config=False)


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from edgecls.embed.cluster import default_out, run_clustering
    from edgecls.embed.store import Embeddings

    values, _ = parse_command_line(ClusterCommand, get_args_parser(), argv)
    s = ClusterCommand(**values)
    check(s)
    if s.method not in METHODS:
        from edgecls.errors import UserError

        raise UserError(f"`method` {s.method!r}: choose one of {', '.join(METHODS)}")
    emb = Embeddings.load(s.embeddings)
    out = Path(s.out) if s.out else default_out(s.embeddings)
    r = run_clustering(emb, s.method, s.k, out, seed=s.seed, force=s.force)
    found = "" if r["clusters_found"] == s.k else f" (only {r['clusters_found']} non-empty)"
    print(f"{s.method}: {r['count']} embeddings in {s.k} clusters{found} -> {out}/clusters.csv, clusters.png")
    m = r["metrics"]
    if m is None:
        print("no labels (images outside class folders): no ARI/AMI/NMI")
    else:
        print(f"ARI {m['ari']:.4f}  AMI {m['ami']:.4f}  NMI {m['nmi']:.4f}  ({r['labelled']} labelled) "
              f"-> {out}/cluster_metrics.json")  # fmt: skip
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
