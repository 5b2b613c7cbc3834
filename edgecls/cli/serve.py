"""`python serve.py --model FILE` / `edgecls serve`: the HTTP API and web page for one model."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from edgecls.cli.common import DefaultsHelpFormatter, add_config_flag, parse_with_config, require_at_least, run_cli
from edgecls.errors import UserError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="serve.py",
        formatter_class=DefaultsHelpFormatter,
        description="Serve a checkpoint (.pth) or ONNX model: POST /classify (multipart field img), "
        "POST /classify/batch, GET /health, GET /model, GET /openapi.json, and a web page at /.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, metavar="FILE", help="edgecls checkpoint (.pth) or ONNX file")
    model.add_argument("--backbone", default=None, help="backbone name, only for a bare state_dict")
    model.add_argument(
        "--class_id_path",
        "--class-id-path",
        default=None,
        metavar="JSON",
        help='class map {"0": name, ...}; only needed when the model file carries no class names',
    )
    model.add_argument("--model-def-path", default="./models/", help="folder of user model definitions (plugins)")
    model.add_argument("--gpu", default="-1", help="CUDA device index, or -1 for the CPU")
    model.add_argument(
        "--threads", type=int, default=None, help="intra-op threads of the model (default: the runtime's choice)"
    )
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the server to the whole network"
    )
    net.add_argument("--port", type=int, default=5000, help="TCP port; 0 picks a free one (printed at start)")
    net.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    net.add_argument(
        "--limit-concurrency",
        type=int,
        default=1024,
        help="open connections/requests beyond which the server answers 503",
    )
    limits = parser.add_argument_group("limits and defaults")
    limits.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest accepted image file, in MiB (413 above)"
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=64_000_000,
        help="largest accepted width x height, checked before decoding (413 above)",
    )
    limits.add_argument("--max-batch", type=int, default=32, help="most files in one /classify/batch request")
    limits.add_argument("--topk", type=int, default=5, help="classes returned when a request gives no ?topk=")
    limits.add_argument(
        "--decode-threads",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="threads that decode and preprocess uploads",
    )
    limits.add_argument(
        "--model-batch",
        type=int,
        default=32,
        help="most images in one forward pass when concurrent requests are micro-batched",
    )
    add_config_flag(parser)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    from edgecls.data.images import MAX_PIXELS

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 0..65535 (0 picks a free port)")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
    if not 1 <= args.max_pixels <= MAX_PIXELS:
        raise UserError(f"--max-pixels {args.max_pixels}: use 1..{MAX_PIXELS:,} (edgecls' decompression-bomb limit)")
    require_at_least(
        args, dict.fromkeys(("max_batch", "topk", "decode_threads", "model_batch", "limit_concurrency"), 1)
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before loading uvicorn so a busy port is a one-line error and --port 0 reports its pick."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror}); is another server using it? "
            "choose another --port (0 picks a free one)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_with_config(get_args_parser(), argv)
    _check_args(args)
    from edgecls.predict import Predictor
    from edgecls.serve import ServeSettings, create_app

    class_names = None
    if args.class_id_path:
        from edgecls.data.classmap import read_class_map

        class_names = read_class_map(args.class_id_path)
    gpu = int(args.gpu) if str(args.gpu).lstrip("-").isdigit() else args.gpu
    predictor = Predictor.from_path(
        args.model,
        device=gpu,
        backbone=args.backbone,
        model_def_path=args.model_def_path,
        class_names=class_names,
        num_threads=args.threads,
    )
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_batch_files=args.max_batch,
        max_pixels=args.max_pixels,
        default_topk=args.topk,
        decode_threads=args.decode_threads,
        max_model_batch=args.model_batch,
    )
    app = create_app(predictor, settings)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if args.host in ("0.0.0.0", "::"):
        print("warning: listening on all interfaces; anyone on the network can use this server", file=sys.stderr)
    print(
        f"edgecls serve: {predictor.backbone or predictor.kind} ({len(predictor.classes)} classes) "
        f"on http://{shown}:{port}/  (API: /classify, /classify/batch, /health, /model, /openapi.json)",
        flush=True,
    )

    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=not args.no_access_log,
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=15,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
