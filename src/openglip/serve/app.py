"""The HTTP server: ``create_app(detector, settings)`` builds a FastAPI app around one detector.

Endpoints:
    ``POST /v1/detect``: multipart (``image`` file + ``prompt``, ``threshold``, ``draw`` fields) or JSON
        (``{"image": "<base64>", "prompt": "cat. dog.", "threshold": 0.3, "draw": false}``). Answers JSON with
        the image size, the detections (``box`` x1 y1 x2 y2 in the image's pixels, ``score``, ``phrase``,
        ``label`` = index of the phrase in ``phrases``) and timings; with ``draw`` true, the PNG with the
        boxes drawn. Refusals are JSON ``{"error": ..., "detail": ...}`` (see :mod:`openglip.serve.inputs`).
    ``GET /v1/health``: model name, device, queue depth, limits.
    ``GET /metrics``: Prometheus text (:class:`~openglip.serve.metrics.ServeMetrics`).
    ``GET /``: the web page (``static/``), which works offline.

Requests are batched by a :class:`~openglip.serve.batching.BatchWorker` that owns the detector.
"""

from __future__ import annotations

import asyncio
import copy
import io
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import OpenGLIPError, UsageError
from ..images import ImageError, load_image
from ..models.transform import resized_size
from ..prompts import load_tokenizer
from ..visualize import render
from .batching import BatchWorker, Job
from .inputs import DetectRequest, ServeError, check_prompt, decode_image, from_form, from_json
from .metrics import ServeMetrics

log = logging.getLogger("openglip.serve")
STATIC_DIR = Path(__file__).with_name("static")
DETECT = "/v1/detect"


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts (each field is an ``openglip serve`` flag).

    Attributes:
        max_batch: most requests per model call; 1 turns dynamic batching off.
        max_wait_ms: how long the oldest waiting request may wait for others to join its batch.
        max_upload_mb: largest request body (image upload or JSON) in MiB; larger gets 413.
        max_pixels: largest image (width x height); larger gets 413 before its pixels are decoded.
        max_prompt_tokens: longest prompt in the model's tokens (with [CLS] and [SEP]); longer gets 422.
        timeout_s: a request not answered within this many seconds gets 504 and is cancelled.
        body_timeout_s: a request whose body has not all arrived this many seconds after its headers gets 408
            and its connection is closed (a client that stalls mid-upload does not hold it open).
        default_threshold: box score threshold when a request gives none.
        mix_sizes: let images of different padded input sizes share a model call. Off, a request's boxes are
            those of ``Detector.predict`` on its image alone (up to float rounding); on, batches are larger with mixed traffic
            but a padded image's scores move slightly (the padding reaches its features).
    """

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_prompt_tokens: int = 256
    timeout_s: float = 30.0
    body_timeout_s: float = 20.0
    default_threshold: float = 0.3
    mix_sizes: bool = False

    def __post_init__(self):
        checks = [
            (self.max_batch >= 1, "--max-batch must be at least 1"),
            (self.max_wait_ms >= 0, "--max-wait-ms must be >= 0"),
            (self.max_upload_mb > 0, "--max-upload-mb must be > 0"),
            (self.max_pixels >= 1, "--max-pixels must be at least 1"),
            (self.max_prompt_tokens >= 3, "--max-prompt-tokens must be at least 3 ([CLS], a word, [SEP])"),
            (self.timeout_s > 0, "--timeout-s must be > 0"),
            (self.body_timeout_s > 0, "--body-timeout-s must be > 0"),
            (0.0 <= self.default_threshold <= 1.0, "the default threshold must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _tokenizer_of(detector):
    model = getattr(detector, "model", None)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        tokenizer = load_tokenizer()
    # a private copy: fast tokenizers are not safe to call from two threads while the worker's is in use
    return copy.deepcopy(tokenizer)


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to be larger than ``limit`` bytes, and with
    408 when it has not all arrived within ``timeout_s`` seconds."""
    declared = request.headers.get("content-length")
    too_large = ServeError(
        413,
        "upload_too_large",
        f"the request body is larger than the server's limit of {limit / 2**20:g} MiB (--max-upload-mb)",
    )
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise ServeError(400, "malformed_request", f"bad Content-Length header {declared!r}") from None
    chunks = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():  # a body without Content-Length (chunked) is counted as it comes
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ServeError(
            408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s (--body-timeout-s)"
        ) from None
    return b"".join(chunks)


def _check_closing_boundary(request: Request, body: bytes) -> None:
    """A multipart body cut short parses as a form with fields missing; say it is cut instead."""
    boundary = ""
    for param in request.headers.get("content-type", "").split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if boundary and f"--{boundary}--".encode("latin-1") not in body:
        raise ServeError(
            400,
            "malformed_form",
            "the multipart body ends before its closing boundary (was the upload cut short?)",
        )


async def _parse(request: Request, body: bytes, default_threshold: float) -> DetectRequest:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        return from_json(body, default_threshold)
    if media == "multipart/form-data":
        _check_closing_boundary(request, body)

        async def replay():  # the body was already read (to enforce the size limit); parse it from memory
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
        except Exception as err:  # starlette raises its HTTPException or MultiPartException
            detail = getattr(err, "detail", None) or getattr(err, "message", None) or str(err)
            raise ServeError(400, "malformed_form", f"the multipart body does not parse: {detail}") from None
        try:
            return await from_form(form, default_threshold)
        finally:
            await form.close()
    raise ServeError(
        415,
        "unsupported_media_type",
        f"send multipart/form-data (image file + prompt) or application/json, not {media or 'no Content-Type'!r}",
    )


def _result_json(finished, prompt, threshold: float, total_s: float) -> dict:
    dets = finished.detections
    height, width = dets.image_size
    return {
        "image": {"width": int(width), "height": int(height)},
        "prompt": prompt.caption,
        "phrases": list(prompt.phrases),
        "threshold": threshold,
        "detections": [
            {
                "box": [float(v) for v in box],
                "score": float(score),
                "phrase": str(phrase),
                "label": int(label),
            }
            for box, score, phrase, label in zip(dets.xyxy, dets.scores, dets.phrases, dets.labels)
        ],
        "timing": {
            "queue_ms": round(finished.queue_s * 1000, 3),
            "inference_ms": round(finished.inference_s * 1000, 3),
            "total_ms": round(total_s * 1000, 3),
            "batch_size": finished.batch_size,
        },
    }


@dataclass
class _Upload:
    """A decoded upload: what the model gets, the oriented RGB picture to draw on, and its batching group."""

    image: object  # the decoded image itself when it is huge, so that predict reports boxes in its pixels
    rgb: object  # EXIF-rotated 8-bit RGB PIL image (reduced when huge)
    size: tuple[int, int]  # (height, width) of the oriented original
    group: tuple[int, int] | None  # padded model input size (H, W)


def _padded_shape(detector, height: int, width: int) -> tuple[int, int] | None:
    transform = getattr(detector, "transform", None)
    if transform is None:
        return None
    h, w = resized_size(height, width, transform.min_size, transform.max_size)
    d = max(1, transform.size_divisibility)
    return -(-h // d) * d, -(-w // d) * d


def _prepare(detector, data: bytes, settings: ServeSettings) -> _Upload:
    """Decode and orient an upload (in a thread-pool thread, beside the model worker)."""
    raw = decode_image(data, settings.max_pixels)
    try:
        rgb, size = load_image(raw, where="upload")
    except ImageError as err:
        raise ServeError(415, "not_an_image", str(err)) from None
    whole = rgb.size == (size[1], size[0])
    group = None if settings.mix_sizes else _padded_shape(detector, rgb.height, rgb.width)
    return _Upload(rgb if whole else raw, rgb, size, group)


def _draw_png(upload: _Upload, dets) -> bytes:
    rgb = upload.rgb
    if rgb.size != (upload.size[1], upload.size[0]):  # a huge image was reduced when read: draw at full size
        rgb = rgb.resize((upload.size[1], upload.size[0]))
    buffer = io.BytesIO()
    render(rgb, dets).save(buffer, format="PNG")
    return buffer.getvalue()


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as the JSON ``{"error", "detail"}``: HTTP errors, validation errors and bugs (logged)."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        name = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return _error(exc.status_code, name, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, "invalid_request", str(exc.errors()))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")


def _health(detector, worker: BatchWorker, settings: ServeSettings) -> dict:
    """``GET /v1/health``: the model, its queue and the server's limits."""
    config = getattr(detector, "config", None)
    return {
        "status": "ok" if worker.running else "starting",
        "model": getattr(config, "name", type(detector).__name__),
        "device": str(getattr(detector, "device", "cpu")),
        "queue_depth": worker.queue_depth,
        "max_batch": settings.max_batch,
        "max_wait_ms": settings.max_wait_ms,
        "limits": {
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
            "max_prompt_tokens": settings.max_prompt_tokens,
            "timeout_s": settings.timeout_s,
        },
        "default_threshold": settings.default_threshold,
    }


async def _answer(
    request: Request, start: float, detector, worker: BatchWorker, settings: ServeSettings, tokenizer
) -> Response:
    """One ``POST /v1/detect``: read and check the request, queue it for the batching worker, answer."""
    body = await _read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
    req = await _parse(request, body, settings.default_threshold)
    prompt = check_prompt(req.prompt, tokenizer, settings.max_prompt_tokens)
    upload = await run_in_threadpool(_prepare, detector, req.image_bytes, settings)
    future = worker.submit(Job(upload.image, prompt, req.threshold, group=upload.group))
    try:
        finished = await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
    except asyncio.TimeoutError:
        future.cancel()  # still queued: the worker drops it; already running: its answer is discarded
        raise ServeError(
            504,
            "timeout",
            f"no answer within {settings.timeout_s:g} s (--timeout-s); the request was cancelled",
        ) from None
    except ImageError as err:
        raise ServeError(415, "not_an_image", str(err)) from None
    except OpenGLIPError as err:  # bad input only the model could see; anything else is a bug (500)
        raise ServeError(422, "invalid_field", str(err)) from None
    if req.draw:
        png = await run_in_threadpool(_draw_png, upload, finished.detections)
        return Response(png, media_type="image/png", headers={"X-Detections": str(len(finished.detections))})
    return JSONResponse(_result_json(finished, prompt, req.threshold, time.perf_counter() - start))


def create_app(detector, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``detector`` (see the module docstring for the endpoints).

    The batching worker starts with the app (``lifespan``; ``with TestClient(app)`` or uvicorn) and stops with
    it, finishing the batch in progress.

    Args:
        detector: an :class:`openglip.Detector` (or any object with the same ``predict``).
        settings: limits and batching; defaults to :class:`ServeSettings` ().
    """
    settings = settings or ServeSettings()
    tokenizer = _tokenizer_of(detector)
    metrics = ServeMetrics(settings.max_batch)
    worker = BatchWorker(
        detector,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        on_batch=metrics.observe_batch,
    )
    metrics.queue_depth.set_function(lambda: worker.queue_depth)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    app = FastAPI(title="OpenGLIP", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.detector = detector
    app.state.settings = settings
    app.state.worker = worker
    app.state.metrics = metrics

    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/v1/health")
    async def health():
        return _health(detector, worker, settings)

    @app.get("/metrics")
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post(DETECT)
    async def detect(request: Request):
        start = time.perf_counter()
        error = None
        try:
            response = await _answer(request, start, detector, worker, settings, tokenizer)
        except ServeError as err:
            response, error = _error(err.status, err.error, err.detail), err.error
        except Exception as err:  # a bug: answered as JSON, logged, and the server keeps serving
            log.exception("unexpected error while answering %s", DETECT)
            response, error = _error(500, "internal_error", f"{type(err).__name__}: {err}"), "internal_error"
        metrics.observe_request(DETECT, response.status_code, time.perf_counter() - start, error)
        return response

    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (Ctrl-C stops it after the batch in progress)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
