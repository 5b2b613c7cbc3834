"""`python serve.py --model FILE` / `edgecls serve`: the HTTP API and web page for one model.

The flags are generated from ServeCommand; the app is edgecls.serve's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from edgecls.cli.common import run_cli, threads_setting
from edgecls.data.images import MAX_PIXELS
from edgecls.errors import UserError
from edgecls.settings import SWITCH, build_parser, check, flag_names, parse_command_line, setting

MODEL, NET, LIMITS = "model", "network", "limits and defaults"


@dataclass
class ServeCommand:
    # ---- model
    model: str | None = setting(
        None, "edgecls checkpoint (.pth) or ONNX file", group=MODEL, metavar="FILE", required=True
    )
    backbone: str | None = setting(None, "backbone name, only for a bare state_dict", group=MODEL)
    class_id_path: str | None = setting(
        None,
        'class map {"0": name, ...}; only needed when the model file carries no class names',
        group=MODEL,
        metavar="JSON",
        flags=("--class_id_path", "--class-id-path"),
    )
    model_def_path: str | None = setting("./models/", "folder of user model definitions (plugins)", group=MODEL)
    gpu: str = setting("-1", "CUDA device index, or -1 for the CPU", group=MODEL)
    threads: int = threads_setting(MODEL)
    catalog: str | None = setting(
        None, "a catalog folder (edgecls catalog build): adds POST /search with thumbnails", group=MODEL, metavar="CAT"
    )
    # ---- network
    host: str = setting("127.0.0.1", "address to listen on; 0.0.0.0 exposes the server to the whole network", group=NET)
    port: int = setting(5000, "TCP port; 0 picks a free one (printed at start)", group=NET, parse=int)
    no_access_log: bool = setting(False, "do not log one line per request", group=NET, kind=SWITCH)
    limit_concurrency: int = setting(
        1024, "open connections/requests beyond which the server answers 503", group=NET, parse=int, at_least=1
    )
    # ---- limits and defaults
    max_upload_mb: float = setting(10.0, "largest accepted image file, in MiB (413 above)", group=LIMITS, parse=float)
    max_pixels: int = setting(
        64_000_000, "largest accepted width x height, checked before decoding (413 above)", group=LIMITS, parse=int
    )
    max_batch: int = setting(32, "most files in one /classify/batch request", group=LIMITS, parse=int, at_least=1)
    topk: int = setting(5, "classes returned when a request gives no ?topk=", group=LIMITS, parse=int, at_least=1)
    decode_threads: int = setting(
        min(4, os.cpu_count() or 1), "threads that decode and preprocess uploads", group=LIMITS, parse=int, at_least=1
    )
    model_batch: int = setting(
        32,
        "most images in one forward pass when concurrent requests are micro-batched",
        group=LIMITS,
        parse=int,
        at_least=1,
    )

    def check(self) -> None:
        """The port, upload and pixel limits first (their own wording), then the declared minimums."""
        if not 0 <= self.port <= 65535:
            raise UserError(f"`port` {self.port}: use 0..65535 (0 picks a free port)")
        if self.max_upload_mb <= 0:
            raise UserError(f"`max_upload_mb` {self.max_upload_mb}: must be > 0")
        if not 1 <= self.max_pixels <= MAX_PIXELS:
            raise UserError(
                f"`max_pixels` {self.max_pixels}: use 1..{MAX_PIXELS:,} (edgecls' decompression-bomb limit)"
            )
        check(self)


# the ONNX-metadata error shared with inference.py names these two (serve.py has no such flags)
FLAGS = flag_names(ServeCommand) | {"input_size": "--input-size", "preprocess": "--preprocess"}


def get_args_parser():
    return build_parser(
        ServeCommand,
        prog="serve.py",
        description="Serve a checkpoint (.pth) or ONNX model: POST /classify (multipart field img), "
        "POST /classify/batch, GET /health, GET /model, GET /openapi.json, and a web page at /.",
        config_at="end",
    )


def main(argv: list[str] | None = None) -> int:
    values, _ = parse_command_line(ServeCommand, get_args_parser(), argv)
    s = ServeCommand(**values)
    s.check()
    from edgecls.predict import Predictor
    from edgecls.serve import ServeSettings, create_app
    from edgecls.serve.server import bind_socket, run_server
    from edgecls.threads import configure

    budget = configure(s.threads, log=print)

    class_names = None
    if s.class_id_path:
        from edgecls.data.classmap import read_class_map

        class_names = read_class_map(s.class_id_path)
    predictor = Predictor.from_path(
        s.model,
        device=s.gpu,
        backbone=s.backbone,
        model_def_path=s.model_def_path,
        class_names=class_names,
        num_threads=budget.intra or None,
    )
    settings = ServeSettings(
        max_upload_bytes=int(s.max_upload_mb * 1024 * 1024),
        max_batch_files=s.max_batch,
        max_pixels=s.max_pixels,
        default_topk=s.topk,
        decode_threads=s.decode_threads,
        max_model_batch=s.model_batch,
    )
    catalog = embedder = None
    if s.catalog:
        from edgecls.embed.catalog import Catalog

        catalog = Catalog.open(s.catalog)
        embedder = catalog.load_embedder(device=s.gpu, model_def_path=s.model_def_path, threads=budget.intra or None)
    app = create_app(predictor, settings, catalog=catalog, embedder=embedder)
    sock = bind_socket(s.host, s.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if s.host in ("0.0.0.0", "::"):
        print("warning: listening on all interfaces; anyone on the network can use this server", file=sys.stderr)
    print(
        f"edgecls serve: {predictor.backbone or predictor.kind} ({len(predictor.classes)} classes) "
        f"on http://{shown}:{port}/  (API: /classify, /classify/batch, {'/search, ' if catalog else ''}/health, "
        "/model, /openapi.json)",
        flush=True,
    )
    run_server(app, sock, access_log=not s.no_access_log, limit_concurrency=s.limit_concurrency)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
