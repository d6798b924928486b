"""``openglip serve``: the HTTP API, its refusals, metrics, dynamic batching under concurrency, timeouts, the CLI
and the README's serve commands."""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import shlex
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from openglip.cli import main
from openglip.serve import ServeSettings, create_app

from .live_server import app_server, cli_server, free_port

REPO = Path(__file__).resolve().parents[1]
PROMPT = "cat. dog."


def _encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jpeg(chelsea) -> bytes:
    return _encode(chelsea)


@pytest.fixture(scope="module")
def client(tiny_detector):
    settings = ServeSettings(max_upload_mb=1.0, max_pixels=200_000, max_prompt_tokens=16, timeout_s=60)
    with TestClient(create_app(tiny_detector, settings)) as c:
        yield c


def _expected(detector, image_bytes: bytes, prompt: str, threshold: float):
    return detector.predict(Image.open(io.BytesIO(image_bytes)), prompt, box_threshold=threshold)


def _assert_same(answer: dict, dets) -> None:
    """A JSON answer equals ``Detector.predict``'s detections (batched float noise allowed)."""
    assert len(answer["detections"]) == len(dets) > 0
    boxes = np.array([d["box"] for d in answer["detections"]])
    scores = np.array([d["score"] for d in answer["detections"]])
    # served (batched, through JSON) vs predict in-process: measured 1.5e-5 px and 1.2e-7 on scores on 1 and 2 threads;
    # the bars 1e-3 px / 1e-5 are 60x / 80x that
    np.testing.assert_allclose(boxes, dets.xyxy, atol=1e-3)
    np.testing.assert_allclose(scores, dets.scores, atol=1e-5)
    assert [d["phrase"] for d in answer["detections"]] == list(dets.phrases)
    assert [d["label"] for d in answer["detections"]] == [int(v) for v in dets.labels]


# --- good requests -----------------------------------------------------------------------------------------------


def test_multipart_request_answers_what_predict_finds(client, tiny_detector, jpeg):
    r = client.post(
        "/v1/detect",
        files={"image": ("cat.jpg", jpeg, "image/jpeg")},
        data={"prompt": PROMPT, "threshold": "0.52"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 451, "height": 300}
    assert body["phrases"] == ["cat", "dog"] and body["threshold"] == 0.52
    _assert_same(body, _expected(tiny_detector, jpeg, PROMPT, 0.52))
    assert all(d["score"] >= 0.52 for d in body["detections"])
    timing = body["timing"]
    assert timing["batch_size"] == 1 and 0 < timing["inference_ms"] <= timing["total_ms"]


def test_json_request_equals_multipart(client, jpeg):
    b64 = base64.b64encode(jpeg).decode()
    by_json = client.post(
        "/v1/detect", json={"image": b64, "prompt": PROMPT, "threshold": 0.52, "draw": False}
    )
    by_form = client.post(
        "/v1/detect", files={"image": ("c.jpg", jpeg)}, data={"prompt": PROMPT, "threshold": "0.52"}
    )
    assert by_json.status_code == by_form.status_code == 200
    assert by_json.json()["detections"] == by_form.json()["detections"]
    # a browser data URL works too, and the default threshold (0.3) keeps more boxes
    by_url = client.post("/v1/detect", json={"image": "data:image/jpeg;base64," + b64, "prompt": PROMPT})
    assert by_url.status_code == 200 and len(by_url.json()["detections"]) > len(by_json.json()["detections"])


def test_draw_true_returns_the_png_with_boxes(client, jpeg):
    r = client.post(
        "/v1/detect",
        files={"image": ("c.jpg", jpeg)},
        data={"prompt": PROMPT, "threshold": "0.52", "draw": "true"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert drawn.shape == plain.shape == (300, 451, 3)
    changed = (np.abs(drawn - plain).sum(-1) > 60).mean()
    assert 0.001 < changed < 0.5  # box outlines and labels, not a blank or replaced image
    assert int(r.headers["x-detections"]) > 0


def test_exif_rotated_upload_gets_boxes_in_rotated_pixels(client, chelsea):
    image = Image.fromarray(chelsea)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    r = client.post("/v1/detect", files={"image": ("r.jpg", buffer.getvalue())}, data={"prompt": PROMPT})
    assert r.status_code == 200 and r.json()["image"] == {"width": 300, "height": 451}
    boxes = np.array([d["box"] for d in r.json()["detections"]])
    assert (boxes[:, 2] <= 300 + 1e-3).all() and (boxes[:, 3] <= 451 + 1e-3).all()


# --- refusals: status, JSON body, and the server keeps serving --------------------------------------------------


@functools.lru_cache(maxsize=1)
def _noise_png() -> bytes:  # ~1.3 MB of noise: over the 1 MiB upload limit (checked before the pixels)
    return _encode(np.random.default_rng(0).integers(0, 255, (640, 700, 3), dtype=np.uint8), "PNG")


def _bad_request(case: str, jpg: bytes, chelsea: np.ndarray) -> dict:
    """``client.post`` keyword arguments of one bad request."""
    b64 = base64.b64encode(jpg).decode()
    as_json = {"content-type": "application/json"}
    big = _noise_png()
    return {
        "text_as_image": {"files": {"image": ("a.jpg", b"not an image")}, "data": {"prompt": PROMPT}},
        "header_only_image": {
            "files": {"image": ("a.png", _encode(chelsea, "PNG")[:64])},
            "data": {"prompt": PROMPT},
        },
        "urlencoded_form": {"data": {"prompt": PROMPT}},
        "big_upload": {"files": {"image": ("b.png", big)}, "data": {"prompt": PROMPT}},
        "big_chunked_upload": {
            "content": iter([big[: 2**19], big[2**19 :]]),
            "headers": as_json,
        },  # no length
        "blank_prompt": {"files": {"image": ("a.jpg", jpg)}, "data": {"prompt": "   "}},
        "periods_only_prompt": {"files": {"image": ("a.jpg", jpg)}, "data": {"prompt": ". . ."}},
        "long_prompt": {"files": {"image": ("a.jpg", jpg)}, "data": {"prompt": ". ".join(["cat"] * 12)}},
        "broken_json": {"content": b'{"prompt": "cat.", ', "headers": as_json},
        "json_array": {"json": ["cat."]},
        "json_without_prompt": {"json": {"image": b64}},
        "json_without_image": {"json": {"prompt": PROMPT}},
        "form_without_image": {"files": {"other": ("a.jpg", jpg)}, "data": {"prompt": PROMPT}},
        "form_without_prompt": {"files": {"image": ("a.jpg", jpg)}},
        "bad_base64": {"json": {"image": "@@not base64@@", "prompt": PROMPT}},
        "threshold_above_1": {"json": {"image": b64, "prompt": PROMPT, "threshold": 1.5}},
        "draw_not_a_bool": {"files": {"image": ("a.jpg", jpg)}, "data": {"prompt": PROMPT, "draw": "maybe"}},
    }[case]


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("text_as_image", 415, "not_an_image"),
        ("header_only_image", 415, "not_an_image"),
        ("urlencoded_form", 415, "unsupported_media_type"),
        ("big_upload", 413, "upload_too_large"),
        ("big_chunked_upload", 413, "upload_too_large"),
        ("blank_prompt", 422, "empty_prompt"),
        ("periods_only_prompt", 422, "empty_prompt"),
        ("long_prompt", 422, "prompt_too_long"),
        ("broken_json", 400, "malformed_json"),
        ("json_array", 400, "malformed_json"),
        ("json_without_prompt", 422, "missing_field"),
        ("json_without_image", 422, "missing_field"),
        ("form_without_image", 422, "missing_field"),
        ("form_without_prompt", 422, "missing_field"),
        ("bad_base64", 422, "invalid_field"),
        ("threshold_above_1", 422, "invalid_field"),
        ("draw_not_a_bool", 422, "invalid_field"),
    ],
)
def test_bad_requests_get_their_status_and_a_json_error(client, jpeg, chelsea, case, status, error):
    r = client.post("/v1/detect", **_bad_request(case, jpeg, chelsea))
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error and len(body["detail"]) > 10
    # and the server still answers a good request
    good = client.post("/v1/detect", files={"image": ("c.jpg", jpeg)}, data={"prompt": PROMPT})
    assert good.status_code == 200


def test_too_many_pixels_is_refused_from_the_header(client, chelsea):
    # 1000x1000 = 1e6 pixels > the 200,000 limit; truncated after the header, so it was never decoded
    header_only = _encode(np.zeros((1000, 1000, 3), np.uint8), "PNG")[:64]
    r = client.post("/v1/detect", files={"image": ("huge.png", header_only)}, data={"prompt": PROMPT})
    assert r.status_code == 413 and r.json()["error"] == "image_too_large"
    assert "1000x1000" in r.json()["detail"] and "--max-pixels" in r.json()["detail"]


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/v1/nothing").json() == {"error": "not_found", "detail": "Not Found"}
    r = client.get("/v1/detect")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_health_metrics_and_page(client, jpeg):
    for _ in range(2):
        client.post("/v1/detect", files={"image": ("c.jpg", jpeg)}, data={"prompt": PROMPT})
    client.post("/v1/detect", files={"image": ("c.jpg", jpeg)}, data={"prompt": ""})
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["device"] == "cpu"
    assert health["queue_depth"] == 0 and health["limits"]["max_prompt_tokens"] == 16
    text = client.get("/metrics").text

    def value(pattern: str) -> float:
        match = re.search(re.escape(pattern) + r" ([0-9.e+]+)", text)
        assert match, f"{pattern} not in /metrics"
        return float(match.group(1))

    assert value('openglip_requests_total{endpoint="/v1/detect",status="200"}') >= 2
    assert value('openglip_requests_total{endpoint="/v1/detect",status="422"}') >= 1
    assert value('openglip_errors_total{error="empty_prompt"}') >= 1
    assert value('openglip_request_latency_seconds_count{endpoint="/v1/detect"}') >= 3
    assert value("openglip_batch_size_count") >= 2 and value("openglip_batch_size_sum") >= 2
    assert value("openglip_queue_depth") == 0
    page = client.get("/")
    assert page.status_code == 200 and 'id="detections"' in page.text
    assert "http" not in re.sub(r'href="/[^"]*"', "", page.text.split("<footer>")[0]).replace(
        "http-equiv", ""
    )
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


# --- batching, concurrency, timeouts against a real uvicorn server ---------------------------------------------


def test_worker_runs_one_call_per_group_and_applies_each_threshold():
    from openglip.prompts import parse_prompt
    from openglip.serve import BatchWorker, Job
    from openglip.structures import Detections

    calls = []

    class Recorder:
        def predict(self, images, *, prompts, box_threshold, batch_size):
            calls.append((list(images), box_threshold))
            scores = np.array([0.2, 0.5, 0.9], np.float32)
            return [Detections(np.zeros((3, 4)), scores, np.zeros(3), ["x"] * 3) for _ in images]

    worker = BatchWorker(Recorder(), max_batch=8, max_wait_ms=200)
    prompt = parse_prompt("x.")
    jobs = [
        Job(name, prompt, threshold, group=name[0])
        for name, threshold in (("a1", 0.1), ("b1", 0.6), ("a2", 0.4))
    ]
    for job in jobs:
        worker.submit(job)
    answers = [job.future.result(30) for job in jobs]
    worker.stop()
    assert calls == [(["a1", "a2"], 0.1), (["b1"], 0.6)]  # the oldest request's group first
    assert [len(a.detections) for a in answers] == [3, 1, 2]  # each request's own threshold
    assert [a.batch_size for a in answers] == [2, 1, 2]


def test_32_concurrent_requests_are_batched_and_each_gets_its_own_answer(tiny_detector, chelsea):
    # four different crops in two sizes (two padded input sizes: 128x192 and 128x128), four different prompts
    crops = [_encode(np.ascontiguousarray(chelsea[:200, x : x + 300])) for x in (0, 151)]
    crops += [_encode(np.ascontiguousarray(chelsea[:, x : x + 300])) for x in (0, 151)]
    prompts = ["cat. dog.", "a red chair", "person. car. tree. cup.", "sofa."]
    expected = {
        (i, j): _expected(tiny_detector, crops[i], prompts[j], 0.52) for i in range(4) for j in range(4)
    }
    app = create_app(tiny_detector, ServeSettings(max_batch=8, max_wait_ms=50))
    work = [(k % 4, (k // 4) % 4) for k in range(32)]
    with app_server(app) as url, httpx.Client(base_url=url, timeout=120) as http:

        def ask(item):
            i, j = item
            return http.post(
                "/v1/detect",
                files={"image": ("c.jpg", crops[i])},
                data={"prompt": prompts[j], "threshold": "0.52"},
            )

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, work))
        metrics = http.get("/metrics").text
    for (i, j), r in zip(work, answers):
        assert r.status_code == 200, r.text
        _assert_same(r.json(), expected[(i, j)])
    sizes = [r.json()["timing"]["batch_size"] for r in answers]
    count = float(re.search(r"openglip_batch_size_count ([0-9.]+)", metrics).group(1))
    ones = float(re.search(r'openglip_batch_size_bucket\{le="1.0"\} ([0-9.]+)', metrics).group(1))
    total = float(re.search(r"openglip_batch_size_sum ([0-9.]+)", metrics).group(1))
    assert total == 32 and count < 32 and ones < count and max(sizes) > 1


class GatedDetector:
    """Wraps a detector; each ``predict`` call is recorded and waits until the test opens the gate."""

    def __init__(self, inner):
        self.inner, self.model, self.config, self.device = inner, inner.model, inner.config, inner.device
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def predict(self, images, *, prompts, **kwargs):
        self.batches.append([p.caption for p in prompts])
        assert self.gate.wait(30), "the test never opened the gate"
        return self.inner.predict(images, prompts=prompts, **kwargs)


def test_a_timed_out_request_gets_504_and_its_batch_still_answers(tiny_detector, chelsea):
    gated = GatedDetector(tiny_detector)
    crop = _encode(np.ascontiguousarray(chelsea[:200, :300]))
    app = create_app(gated, ServeSettings(max_batch=3, max_wait_ms=20_000, timeout_s=5.0))
    with (
        app_server(app) as url,
        httpx.Client(base_url=url, timeout=60) as http,
        ThreadPoolExecutor(3) as pool,
    ):

        def ask(prompt):
            return http.post(
                "/v1/detect", files={"image": ("c.jpg", crop)}, data={"prompt": prompt, "threshold": "0.52"}
            )

        try:
            first = pool.submit(ask, "cat.")
            time.sleep(2.5)  # the first request has used half its time when the other two join its batch
            others = [pool.submit(ask, p) for p in ("dog.", "sofa.")]
            late = first.result()  # times out at 5 s while its batch of three is held at the gate
            assert late.status_code == 504 and late.json()["error"] == "timeout"
            assert len(gated.batches) == 1 and sorted(gated.batches[0]) == ["cat.", "dog.", "sofa."]
        finally:
            gated.gate.set()
        for future, prompt in zip(others, ("dog.", "sofa.")):
            r = future.result()
            assert r.status_code == 200, r.text
            _assert_same(r.json(), _expected(tiny_detector, crop, prompt, 0.52))
            assert r.json()["timing"]["batch_size"] == 3
        metrics = http.get("/metrics").text
    assert 'openglip_requests_total{endpoint="/v1/detect",status="504"} 1.0' in metrics
    assert 'openglip_errors_total{error="timeout"} 1.0' in metrics


def test_a_request_that_times_out_in_the_queue_is_never_run(tiny_detector, chelsea):
    gated = GatedDetector(tiny_detector)
    crop = _encode(np.ascontiguousarray(chelsea[:200, :300]))
    app = create_app(gated, ServeSettings(max_batch=1, max_wait_ms=0, timeout_s=1.0))
    with (
        app_server(app) as url,
        httpx.Client(base_url=url, timeout=60) as http,
        ThreadPoolExecutor(2) as pool,
    ):

        def ask(prompt):
            return http.post("/v1/detect", files={"image": ("c.jpg", crop)}, data={"prompt": prompt})

        try:
            running = pool.submit(ask, "cat.")
            for _ in range(200):  # until "cat." is in the model
                if gated.batches:
                    break
                time.sleep(0.05)
            queued = pool.submit(ask, "dog.")
            assert running.result().status_code == 504 and queued.result().status_code == 504
        finally:
            gated.gate.set()
        after = ask("sofa.")
        assert after.status_code == 200
    assert gated.batches == [["cat."], ["sofa."]]  # "dog" was dropped, not computed


def test_a_failing_request_does_not_fail_its_batch(tiny_detector, chelsea):
    class Picky:
        """Fails any call that includes the prompt "boom" (as a bad input deep in the model would)."""

        def __init__(self, inner):
            self.inner, self.model, self.config, self.device = inner, inner.model, inner.config, inner.device

        def predict(self, images, *, prompts, **kwargs):
            if any(p.caption == "boom" for p in prompts):
                raise RuntimeError("boom")
            return self.inner.predict(images, prompts=prompts, **kwargs)

    crop = _encode(np.ascontiguousarray(chelsea[:200, :300]))
    app = create_app(Picky(tiny_detector), ServeSettings(max_batch=3, max_wait_ms=2000))
    with (
        app_server(app) as url,
        httpx.Client(base_url=url, timeout=60) as http,
        ThreadPoolExecutor(4) as pool,
    ):
        futures = [
            pool.submit(http.post, "/v1/detect", files={"image": ("c.jpg", crop)}, data={"prompt": p})
            for p in ("cat.", "boom", "dog.")
        ]
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert answers[0].json()["timing"]["batch_size"] == answers[2].json()["timing"]["batch_size"] == 3
    assert answers[1].json() == {"error": "internal_error", "detail": "RuntimeError: boom"}


def _multipart(jpg: bytes, boundary: str = "XyZ") -> tuple[dict, bytes]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{PROMPT}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="c.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, body


def test_a_multipart_body_cut_before_its_closing_boundary_is_malformed(client, jpeg):
    """Issue 23.4: a body cut short is 400 malformed_form, not 422 missing_field."""
    headers, body = _multipart(jpeg)
    assert client.post("/v1/detect", content=body, headers=headers).status_code == 200
    for cut in (len(body) - 10, len(body) // 2):
        r = client.post("/v1/detect", content=body[:cut], headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "malformed_form", r.text
        assert "closing boundary" in r.json()["detail"]


def test_a_client_that_stalls_mid_body_gets_408_and_its_connection_closed(tiny_detector, jpeg):
    """Issue 23.4: a client that sends part of a body and stalls does not hold its connection open; others
    are answered meanwhile."""
    app = create_app(tiny_detector, ServeSettings(body_timeout_s=1.0))
    headers, body = _multipart(jpeg)
    with app_server(app) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
        s.settimeout(10)
        head = f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += f"Content-Type: {headers['content-type']}\r\n\r\n"
        start = time.monotonic()
        s.sendall(head.encode() + body[:100])  # ...and stall
        with httpx.Client(base_url=url, timeout=30) as http:
            good = http.post("/v1/detect", content=body, headers=headers)
        assert good.status_code == 200
        answer = b""
        while chunk := s.recv(65536):  # until the server closes the connection
            answer += chunk
        assert time.monotonic() - start < 8
    assert answer.startswith(b"HTTP/1.1 408") and b'"error":"body_timeout"' in answer, answer[:300]
    with pytest.raises(Exception, match="--body-timeout-s must be > 0"):
        ServeSettings(body_timeout_s=0)


# --- the CLI and the README ---------------------------------------------------------------------------------------


def test_serve_without_weights_serves_the_detect_default(monkeypatch, capsys):
    """``openglip serve`` alone serves what ``openglip detect`` uses without weights: the zero-shot default."""
    import openglip.serve
    import openglip.teachers

    loaded = []

    def load_teacher(spec, device=None):
        loaded.append(spec)
        return SimpleNamespace(
            device="cpu", proposals="yolo"
        )  # stands for the zero-shot teacher (no weights here)

    served = {}
    monkeypatch.setattr(openglip.teachers, "load_teacher", load_teacher)
    monkeypatch.setattr(
        openglip.serve, "create_app", lambda predictor, settings: served.setdefault("p", predictor)
    )
    monkeypatch.setattr(openglip.serve, "run_server", lambda app, **kw: served.setdefault("app", app))
    assert main(["serve", "--port", str(free_port())]) == 0
    assert loaded == ["default"] and served["app"] is served["p"]
    assert "zero-shot default" in capsys.readouterr().err


def test_serve_bad_options_are_one_line_usage_errors(capsys):
    assert main(["serve", "--preset", "tiny", "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--preset", "tiny", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot listen on 127.0.0.1" in err and "--port" in err


def _readme_serve_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Serve", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        line = line.split("  #", 1)[0].rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        if (current + line).strip():
            commands.append((current + line).strip())
        current = ""
    return commands


def test_readme_serve_commands_run(tmp_path, tiny_checkpoint, chelsea):
    """Runs the README's Serve block as written: the server command, then each curl command against it."""
    commands = _readme_serve_block()
    assert commands[0].startswith("openglip serve --weights runs/shapes/model.safetensors")
    assert len(commands) >= 3 and all(c.startswith("curl ") for c in commands[1:])
    (tmp_path / "runs" / "shapes").mkdir(parents=True)
    (tmp_path / "runs" / "shapes" / "model.safetensors").symlink_to(tiny_checkpoint)
    Image.fromarray(chelsea).save(tmp_path / "photo.jpg")
    server_command = "exec " + commands[0].replace("--port 8000", "--port {port}")
    assert "{port}" in server_command
    with cli_server([], cwd=tmp_path, shell_command=server_command) as (url, _):
        outputs = []
        for command in commands[1:]:
            command = command.replace("http://127.0.0.1:8000", url)
            done = subprocess.run(
                command, shell=True, cwd=tmp_path, capture_output=True, timeout=120, executable="/bin/bash"
            )
            assert done.returncode == 0, f"{command}\n{done.stderr.decode()}"
            outputs.append(done.stdout)
    answers = [json.loads(o) for o in outputs if o.strip()]
    assert answers and all(a["image"] == {"width": 451, "height": 300} and a["detections"] for a in answers)
    drawn = [c for c in commands if "draw=true" in c]
    for command in drawn:
        out = shlex.split(command)[shlex.split(command).index("-o") + 1]
        assert (tmp_path / out).read_bytes()[:4] == b"\x89PNG"
    assert drawn
