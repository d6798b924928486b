"""``openglip serve``: an HTTP server with dynamic batching and a web page for one detector."""

from __future__ import annotations

import socket
import sys

from ..errors import OpenGLIPError, UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a detector over HTTP (JSON API, Prometheus metrics, a web page)",
        description=(
            "Serve a detector over HTTP: POST /v1/detect (multipart or JSON), GET /v1/health, GET /metrics, and a "
            "web page at / to try it in a browser. Concurrent requests are batched on one model worker."
        ),
        epilog="example: openglip serve --weights runs/shapes/model.safetensors --port 8000  "
        '(then: curl -F image=@photo.jpg -F prompt="cat. cup." http://127.0.0.1:8000/v1/detect)',
    )
    p.add_argument(
        "--weights",
        help="checkpoint (OpenGLIP .safetensors, official GLIP .pth) or an official name: glip_t, glip_l "
        "(default: the zero-shot default model, as openglip detect)",
    )
    p.add_argument(
        "--preset",
        help="model preset (default: read from --weights); without --weights the model has random weights",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests per model call; 1 = no batching")
    p.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="how long a request may wait for others to batch with"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest request body in MiB (413 above)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image, width x height (413 above)"
    )
    p.add_argument(
        "--max-prompt-tokens", type=int, default=256, help="longest prompt in model tokens (422 above)"
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=30.0,
        help="answer 504 and cancel a request after this many seconds",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=20.0,
        help="answer 408 and close the connection when a request body has not all arrived after this many "
        "seconds (default 20)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.3, help="box score threshold when a request gives none"
    )
    p.add_argument(
        "--mix-sizes",
        action="store_true",
        help="batch images of different input sizes together (bigger batches with mixed traffic; a padded "
        "image's scores then move slightly)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)


def _check_address(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be listened on (before the model is loaded)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise UsageError(f"--host {host!r} cannot be resolved: {err}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as err:
            raise UsageError(
                f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host"
            ) from None


def cmd_serve(args) -> int:
    from .detect import load_predictor

    try:
        from ..serve import ServeSettings, create_app, run_server
    except ImportError as err:
        raise UsageError(
            f"openglip serve needs the 'serve' extra ({err}): pip install 'openglip[serve]'"
        ) from None

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {args.port}")
    _check_address(args.host, args.port)
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_prompt_tokens=args.max_prompt_tokens,
        timeout_s=args.timeout_s,
        body_timeout_s=args.body_timeout_s,
        default_threshold=args.threshold,
        mix_sizes=args.mix_sizes,
    )
    try:
        detector = load_predictor(
            args
        )  # no --weights, no --preset: the zero-shot default, as openglip detect
    except ValueError as err:  # an unknown preset, or cuda asked for without a GPU
        if isinstance(err, OpenGLIPError):
            raise
        raise UsageError(str(err)) from None
    app = create_app(detector, settings)
    name = getattr(getattr(detector, "config", None), "name", type(detector).__name__)
    print(
        f"openglip: serving {name} on {detector.device} at http://{args.host}:{args.port}/ "
        f"(max batch {settings.max_batch}, max wait {settings.max_wait_ms:g} ms)",
        file=sys.stderr,
        flush=True,
    )
    run_server(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
