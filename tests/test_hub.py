"""Official weights by name (openglip.hub) against a fake Hugging Face Hub on 127.0.0.1.

The fake Hub answers huggingface_hub's ``HEAD``/``GET /{repo}/resolve/{revision}/{filename}`` with the headers
it reads (``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``) and serves small checkpoints in the official
layout (``{"model": {"module.<key>": tensor}}``) of a ``tiny`` model; the table entries are patched to that
preset. It counts requests, so the tests can show that a second load touches no network. No test here reaches
the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

import openglip
from openglip import hub
from openglip.checkpoints import CheckpointError, export_official
from openglip.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Files of ``GLIPModel/GLIP`` served over HTTP; ``requests`` lists every (method, path)."""

    def __init__(self, files: dict[str, bytes], etags: dict[str, str] | None = None):
        self.files, self.etags, self.requests = files, etags or {}, []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _answer(self, body: bool) -> None:
                hub_.requests.append((self.command, self.path))
                prefix = f"/{hub.REPO_ID}/resolve/"
                name = self.path.split("?")[0].removeprefix(prefix).split("/", 1)[-1]
                data = hub_.files.get(name) if self.path.startswith(prefix) else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = hub_.etags.get(
                    name, hashlib.sha256(data).hexdigest()
                )  # an LFS file's etag: its sha256
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _official_bytes(model) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {f"module.{k}": v for k, v in export_official(model).items()}}, buffer)
    return buffer.getvalue()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_detector):
    """``glip_t`` and ``glip_l`` served as tiny official checkpoints; the Hub cache in tmp_path."""
    from huggingface_hub import constants

    files = {}
    for name in ("glip_t", "glip_l"):
        entry = hub.OFFICIAL_MODELS[name]
        files[entry.filename] = _official_bytes(tiny_detector.model)
        monkeypatch.setitem(hub.OFFICIAL_MODELS, name, dataclasses.replace(entry, preset="tiny"))
    server = FakeHub(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite may run with HF_HUB_OFFLINE=1 set
    yield server
    server.close()


def _boxes(detector, chelsea):
    return detector.predict(Image.fromarray(chelsea), "cat. ear.", box_threshold=0.0)


def test_name_downloads_once_then_loads_the_converted_safetensors(
    fake_hub, tiny_detector, chelsea, monkeypatch
):
    det = openglip.load_model("glip_t", device="cpu")
    assert any(method == "GET" for method, _ in fake_hub.requests)
    converted = hub.converted_path("glip_t")
    assert converted.is_file() and converted.name == "glip_tiny_model_o365_goldg_cc_sbu.safetensors"
    # the official weights arrived intact: same detections as the model they were made from
    ours, theirs = _boxes(det, chelsea), _boxes(tiny_detector, chelsea)
    assert len(ours) > 0
    torch.testing.assert_close(torch.as_tensor(ours.xyxy), torch.as_tensor(theirs.xyxy))

    seen = len(fake_hub.requests)

    def no_pickle(*args, **kwargs):
        raise AssertionError("the second load unpickled the official file")

    monkeypatch.setattr(torch, "load", no_pickle)
    again = openglip.load_model("glip_t", device="cpu")
    assert len(fake_hub.requests) == seen  # no network at all
    torch.testing.assert_close(torch.as_tensor(_boxes(again, chelsea).xyxy), torch.as_tensor(ours.xyxy))


@pytest.mark.parametrize("lie", ["table", "hub"])
def test_checksum_mismatch_is_refused_and_nothing_is_cached(fake_hub, tmp_path, monkeypatch, lie):
    entry = hub.OFFICIAL_MODELS["glip_l"]
    if lie == "table":  # the recorded sha256 differs from the file
        monkeypatch.setitem(hub.OFFICIAL_MODELS, "glip_l", dataclasses.replace(entry, sha256="0" * 64))
    else:  # no sha256 recorded; the Hub's announced LFS oid differs from what it sent
        fake_hub.etags[entry.filename] = "f" * 64
    with pytest.raises(CheckpointError, match="failed its checksum") as err:
        openglip.load_model("glip_l", device="cpu")
    assert entry.filename in str(err.value) and "\n" not in str(err.value)
    cached = [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert cached == []  # no bad blob left behind, nothing converted
    assert not hub.converted_path("glip_l").exists()


def test_offline_with_an_empty_cache_is_one_line_then_a_file_put_by_hand_works(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        openglip.load_model("glip_t", device="cpu")
    message = str(err.value)
    where = hub.manual_path("glip_t")
    assert "\n" not in message
    assert (
        "glip_tiny_model_o365_goldg_cc_sbu.pth" in message
        and hub.REPO_ID in message
        and str(where) in message
    )
    assert fake_hub.requests == []
    # the offline story: put the file where the message says, and the name works without the network
    where.parent.mkdir(parents=True)
    where.write_bytes(fake_hub.files["glip_tiny_model_o365_goldg_cc_sbu.pth"])
    assert openglip.load_model("glip_t", device="cpu").config.name == "tiny"
    assert fake_hub.requests == [] and where.is_file()


def test_cli_exit_2_when_offline(fake_hub, monkeypatch, tmp_path, chelsea, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    photo = tmp_path / "cat.png"
    Image.fromarray(chelsea).save(photo)
    assert main(["detect", str(photo), "--prompt", "cat.", "--weights", "glip_l"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("openglip: error:")]
    assert len(err) == 1 and "glip_large_model.pth" in err[0] and hub.REPO_ID in err[0]


def test_cli_weights_by_name_end_to_end(fake_hub, tmp_path, chelsea, capsys):
    photo = tmp_path / "cat.png"
    Image.fromarray(chelsea).save(photo)
    assert main(["detect", str(photo), "--prompt", "cat.", "--weights", "glip_t", "--threshold", "0"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert lines and all(row[0] == str(photo) and row[1] == "cat" for row in lines)
    assert hub.converted_path("glip_t").is_file()


def test_a_local_path_wins_over_a_name(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "glip_t").write_bytes(tiny_checkpoint.read_bytes())
    assert hub.resolve_weights("glip_t") == "glip_t"  # no download: the file is used as it is
    assert not hub.is_official_name("glip_t")


def test_random_weights_route_needs_no_network(monkeypatch):
    def no_fetch(name):
        raise AssertionError("pretrained=False fetched weights")

    monkeypatch.setattr(hub, "fetch", no_fetch)
    assert hub.resolve_model_args("glip_t_c", None, pretrained=False) == ("glip_t", None)
    assert hub.resolve_model_args("tiny", None, pretrained=True) == ("tiny", None)
    with pytest.raises(CheckpointError, match="fusion=late"):
        hub.resolve_model_args("glip_t_a", None, pretrained=False)


def test_export_without_weights_says_what_to_pass(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model name" in err and "glip_t" in err and ".safetensors" in err


def test_readme_models_section_runs(fake_hub, tmp_path, monkeypatch, chelsea):
    """The README's Models section as written, against the fake Hub (``glip_t`` served as a tiny model)."""
    from .test_readme import blocks, command_lines

    (code,) = [c for lang, c in blocks("Models") if lang == "python"]
    (shell,) = [c for lang, c in blocks("Models") if lang == "bash"]
    monkeypatch.chdir(tmp_path)
    Image.fromarray(chelsea).save("photo.jpg")
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["det"].config.name == "tiny" and hub.converted_path("glip_t").is_file()
    seen = len(fake_hub.requests)
    commands = command_lines(shell)
    assert commands and all("glip_t" in argv for argv in commands)
    for argv in commands:
        assert main(argv) == 0, argv
    assert len(fake_hub.requests) == seen  # the CLI loaded the converted file: no network
