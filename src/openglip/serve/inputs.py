"""Reading and checking a detection request: multipart or JSON, image bytes, prompt, threshold, draw.

Every refusal is a :class:`ServeError` with an HTTP status and a JSON body ``{"error": code, "detail": text}``:

======  =========================  ==========================================================================
status  error                      when
======  =========================  ==========================================================================
400     ``malformed_json``         the JSON body does not parse or is not an object
400     ``malformed_form``         the multipart body does not parse or ends before its closing boundary
408     ``body_timeout``           the body did not arrive within ``--body-timeout-s`` (the connection closes)
413     ``upload_too_large``       the request body is larger than ``--max-upload-mb``
413     ``image_too_large``        the image has more pixels than ``--max-pixels``
415     ``not_an_image``           the image bytes are not an image PIL can read
415     ``unsupported_media_type`` the body is neither ``multipart/form-data`` nor ``application/json``
422     ``missing_field``          ``image`` or ``prompt`` is absent
422     ``invalid_field``          a field has the wrong type or value (threshold outside [0, 1], bad base64)
422     ``empty_prompt``           the prompt is blank or names nothing to detect
422     ``prompt_too_long``        the prompt has more tokens than ``--max-prompt-tokens``
504     ``timeout``                no answer within ``--timeout-s`` (the request is cancelled)
======  =========================  ==========================================================================
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..prompts import Prompt, PromptError, parse_prompt, token_spans

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ServeError(Exception):
    """A request the server refuses: HTTP ``status``, a short ``error`` code and a ``detail`` for people."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict:
        return {"error": self.error, "detail": self.detail}


@dataclass
class DetectRequest:
    """A checked request: image bytes, the prompt as typed, threshold and whether to return a drawn PNG."""

    image_bytes: bytes
    prompt: str
    threshold: float
    draw: bool


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ServeError(422, "invalid_field", f"'{name}' must be true or false, got {value!r}")


def _as_threshold(value) -> float:
    if isinstance(value, bool):
        raise ServeError(422, "invalid_field", f"'threshold' must be a number in [0, 1], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ServeError(
            422, "invalid_field", f"'threshold' must be a number in [0, 1], got {value!r}"
        ) from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ServeError(422, "invalid_field", f"'threshold' must be in [0, 1], got {value!r}")
    return number


def from_json(body: bytes, default_threshold: float) -> DetectRequest:
    """``{"image": base64, "prompt": str, "threshold": float, "draw": bool}`` -> :class:`DetectRequest`."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServeError(400, "malformed_json", f"the body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ServeError(400, "malformed_json", f"the body must be a JSON object, got {type(data).__name__}")
    for name in ("image", "prompt"):
        if name not in data:
            raise ServeError(422, "missing_field", f"the JSON body has no '{name}' field")
    image, prompt = data["image"], data["prompt"]
    if not isinstance(image, str):
        raise ServeError(422, "invalid_field", "'image' must be a base64 string")
    if not isinstance(prompt, str):
        raise ServeError(422, "invalid_field", "'prompt' must be a string like 'cat. dog.'")
    if image.startswith("data:") and "," in image:  # a data URL, as browsers write them
        image = image.split(",", 1)[1]
    try:
        image_bytes = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ServeError(422, "invalid_field", f"'image' is not valid base64: {err}") from None
    return DetectRequest(
        image_bytes,
        prompt,
        default_threshold if data.get("threshold") is None else _as_threshold(data["threshold"]),
        _as_bool(data.get("draw", False), "draw"),
    )


async def from_form(form, default_threshold: float) -> DetectRequest:
    """A parsed multipart form (``image`` file, ``prompt``, ``threshold``, ``draw``) -> :class:`DetectRequest`."""
    upload = form.get("image")
    if upload is None:
        raise ServeError(422, "missing_field", "the form has no 'image' file field")
    if isinstance(upload, str) or not hasattr(upload, "read"):
        raise ServeError(422, "invalid_field", "'image' must be a file upload (curl -F image=@photo.jpg)")
    prompt = form.get("prompt")
    if prompt is None:
        raise ServeError(422, "missing_field", "the form has no 'prompt' field")
    if not isinstance(prompt, str):
        raise ServeError(422, "invalid_field", "'prompt' must be a text field, not a file")
    threshold = form.get("threshold")
    draw = form.get("draw")
    return DetectRequest(
        await upload.read(),
        prompt,
        default_threshold if threshold in (None, "") else _as_threshold(threshold),
        False if draw is None else _as_bool(draw, "draw"),
    )


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Image bytes -> a decoded PIL image (any mode, EXIF orientation not yet applied).

    Raises:
        ServeError: 415 when the bytes are not an image, 413 when it has more than ``max_pixels`` pixels
            (checked from the header, before the pixels are decoded).
    """
    if not data:
        raise ServeError(415, "not_an_image", "the image is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
        except Image.DecompressionBombError as err:  # beyond PIL's own limit (~179 megapixels)
            raise ServeError(413, "image_too_large", f"{err} (--max-pixels is {max_pixels})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ServeError(
                415, "not_an_image", f"the upload is not an image PIL can read ({type(err).__name__})"
            ) from None
        if width * height > max_pixels:
            raise ServeError(
                413,
                "image_too_large",
                f"the image is {width}x{height} = {width * height} pixels, above the server's limit of "
                f"{max_pixels} (--max-pixels); send a smaller image",
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ServeError(
                415, "not_an_image", f"the image could not be decoded ({type(err).__name__}: {err})"
            ) from None
    return image


def check_prompt(text: str, tokenizer, max_tokens: int) -> Prompt:
    """Parse a prompt and check its length in the model's tokens (with [CLS] and [SEP]).

    Raises:
        ServeError: 422 ``empty_prompt`` or ``prompt_too_long``.
    """
    if not text.strip():
        raise ServeError(422, "empty_prompt", "the prompt is empty; name what to find, e.g. 'cat. dog.'")
    try:
        prompt = parse_prompt(text)
    except PromptError as err:
        raise ServeError(422, "empty_prompt", str(err)) from None
    encoding = tokenizer([prompt.caption], add_special_tokens=True)
    count = len(encoding["input_ids"][0])
    if count > max_tokens:
        raise ServeError(
            422,
            "prompt_too_long",
            f"the prompt is {count} tokens, above the server's limit of {max_tokens} (--max-prompt-tokens)",
        )
    silent = [p for p, toks in zip(prompt.phrases, token_spans(encoding[0], prompt)) if not toks]
    if silent:
        raise ServeError(422, "empty_prompt", f"the phrases {silent} have no tokens the model can read")
    return prompt
