"""Official GLIP weights by name: ``load_model("glip_t")``, ``--weights glip_l``.

A name from :data:`OFFICIAL_MODELS` is fetched from the Hugging Face Hub repository ``GLIPModel/GLIP`` with
``huggingface_hub`` (its cache, resumable downloads, progress bar; ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``HF_TOKEN``, ``HF_HOME`` and ``HF_HUB_CACHE`` are honoured), checked (size and sha256), converted once to an
OpenGLIP ``.safetensors`` beside the cache entry, and that file is what every later call loads: no network
request and no unpickling after the first time.

Where things live, under the Hub cache (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``)::

    models--GLIPModel--GLIP/snapshots/<commit>/glip_tiny_model_o365_goldg_cc_sbu.pth   huggingface_hub's copy
    models--GLIPModel--GLIP/openglip/glip_tiny_model_o365_goldg_cc_sbu.pth   a copy put here by hand (offline)
    models--GLIPModel--GLIP/openglip/glip_tiny_model_o365_goldg_cc_sbu.safetensors   converted weights

A local path always wins over a name: :func:`resolve_weights` returns an existing path unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .checkpoints import CheckpointError, load_into, read_checkpoint, save_safetensors
from .config import ModelConfig, apply_overrides, get_preset
from .models.glip import build_model

REPO_ID = "GLIPModel/GLIP"
log = logging.getLogger("openglip.hub")


@dataclass(frozen=True)
class OfficialModel:
    """One official checkpoint of ``GLIPModel/GLIP`` and the preset it loads into."""

    name: str  # what load_model / --weights accept
    filename: str  # the file in the Hub repository
    preset: str  # the OpenGLIP preset it loads into
    overrides: tuple[str, ...] = ()  # key=value changes to the preset (GLIP-T (A) has no deep fusion)
    sha256: str | None = None  # LFS oid; None: not recorded here (the Hub's own LFS oid is checked instead)
    size: int | None = None  # bytes; None: not recorded here
    approx_size: str = ""  # as the Hub's file list shows it
    coco: str = "-"  # COCO val2017 AP, zero-shot / fine-tuned (microsoft/GLIP model zoo)
    lvis: str = (
        "-"  # zero-shot LVIS minival APr, last / best pre-training checkpoint (microsoft/GLIP model zoo)
    )
    odinw: str = "-"  # zero-shot ODinW-13 mean AP (microsoft/GLIP model zoo)
    data: str = ""  # pre-training data

    def config(self) -> ModelConfig:
        return apply_overrides(get_preset(self.preset), self.overrides)


# Sizes and hashes: the GLIPModel/GLIP file list shows rounded sizes only (2.43 GB for GLIP-T (A), 6.9 GB for
# GLIP-L; 3.71 GB is what same-named GLIP-T files show on other Hub repositories), so no exact size or sha256
# is recorded; each download is checked against the LFS sha256 the Hub announces for it (the blob's name).
T = "glip_t"
OFFICIAL_MODELS: dict[str, OfficialModel] = {
    m.name: m
    for m in (
        OfficialModel("glip_t_a", "glip_a_tiny_o365.pth", T, ("fusion=late",), approx_size="2.43 GB",
                      coco="42.9 / 52.9", lvis="- / 14.2", odinw="~28.7", data="O365"),
        OfficialModel("glip_t_b", "glip_tiny_model_o365.pth", T, coco="44.9 / 53.8", lvis="- / 13.5",
                      odinw="~33.2", data="O365"),
        OfficialModel("glip_t_c", "glip_tiny_model_o365_goldg.pth", T, approx_size="3.71 GB", coco="46.7 / 55.1",
                      lvis="14.3 / 17.7", odinw="44.4", data="O365, GoldG"),
        OfficialModel("glip_t_c_lvisbest", "glip_tiny_model_o365_goldg_lvisbest.pth", T, lvis="- / 17.7",
                      data="O365, GoldG"),
        OfficialModel("glip_t", "glip_tiny_model_o365_goldg_cc_sbu.pth", T, approx_size="3.71 GB",
                      coco="46.6 / 55.2", lvis="17.6 / 20.1", odinw="42.7", data="O365, GoldG, CC3M, SBU"),
        OfficialModel("glip_t_lvisbest", "glip_tiny_model_o365_goldg_cc_sbu_lvisbest.pth", T,
                      approx_size="3.71 GB", lvis="- / 20.1", data="O365, GoldG, CC3M, SBU"),
        OfficialModel("glip_l", "glip_large_model.pth", "glip_l", approx_size="6.9 GB", coco="51.4 / 61.7",
                      lvis="29.3 / 30.1", odinw="51.2", data="FourODs, GoldG, CC3M+12M, SBU"),
        OfficialModel("glip_l_lvisbest", "glip_large_model_lvisbest.pth", "glip_l", approx_size="6.9 GB",
                      lvis="- / 30.1", data="FourODs, GoldG, CC3M+12M, SBU"),
    )
}  # fmt: skip


def is_official_name(spec: str | os.PathLike | None) -> bool:
    """Whether ``spec`` names an official model (and is not a file that exists: a local path always wins)."""
    return isinstance(spec, str) and spec in OFFICIAL_MODELS and not Path(spec).exists()


def resolve_weights(spec: str | os.PathLike) -> str | os.PathLike:
    """``spec`` itself, or for an official model name the path of its converted ``.safetensors`` (fetched and
    converted on first use)."""
    return str(fetch(spec)) if is_official_name(spec) else spec


def resolve_model_args(
    preset_or_path: str | os.PathLike, weights: str | os.PathLike | None, pretrained: bool
) -> tuple[str, str | None]:
    """``load_model``'s arguments with official names replaced: by their converted weights (``pretrained``) or by
    their preset (random weights)."""
    spec = os.fspath(preset_or_path)
    if weights is not None:
        return spec, os.fspath(resolve_weights(weights))
    if is_official_name(spec):
        entry = OFFICIAL_MODELS[spec]
        if pretrained:
            return str(fetch(spec)), None
        if entry.overrides:
            raise CheckpointError(
                f"{spec!r} is the {entry.preset!r} preset with {', '.join(entry.overrides)}; for random weights "
                "build that config (openglip.apply_overrides) instead"
            )
        return entry.preset, None
    return spec, None


# ------------------------------------------------------------------------------------------------------------
# Cache layout
# ------------------------------------------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """The Hub cache, read from the environment at call time (as ``huggingface_hub`` resolves it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def openglip_dir() -> Path:
    """Where converted weights (and files put by hand) live: ``<cache>/models--GLIPModel--GLIP/openglip``."""
    return hub_cache_dir() / ("models--" + REPO_ID.replace("/", "--")) / "openglip"


def converted_path(name: str) -> Path:
    """The converted weights: named after the official file, so that each file is converted once."""
    return openglip_dir() / (Path(OFFICIAL_MODELS[name].filename).stem + ".safetensors")


def manual_path(name: str) -> Path:
    """Where to put the official file by hand when the Hub cannot be reached."""
    return openglip_dir() / OFFICIAL_MODELS[name].filename


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )


# ------------------------------------------------------------------------------------------------------------
# Fetch, check, convert
# ------------------------------------------------------------------------------------------------------------


def fetch(name: str) -> Path:
    """The converted ``.safetensors`` of official model ``name``: from the conversion cache when it is there
    (no network), else from a file put by hand at :func:`manual_path`, else downloaded from the Hub.

    Raises:
        CheckpointError: the Hub cannot be reached (one line: the file, the repository and where to put it by
            hand), the file fails its checksum, or it does not match its preset.
    """
    entry = OFFICIAL_MODELS[name]
    out = converted_path(name)
    if out.is_file():
        return out
    manual = manual_path(name)
    if manual.is_file():
        _check(entry, manual, by_hand=True)
        return _convert(entry, manual, out)
    return _convert(entry, _download(entry), out)


def _download(entry: OfficialModel) -> Path:
    from huggingface_hub import hf_hub_download

    offline = _offline()
    try:
        path = hf_hub_download(
            REPO_ID,
            entry.filename,
            cache_dir=hub_cache_dir(),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            local_files_only=offline,
        )
    except Exception as err:  # offline, no network, HTTP errors: all end in the same advice
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else _first_line(err)
        raise CheckpointError(
            f"cannot get {entry.filename} from the Hugging Face Hub repository {REPO_ID} ({why}); download it "
            f"by hand and put it at {manual_path(entry.name)} (or pass its path as the weights)"
        ) from None
    path = Path(path)
    _check(entry, path, by_hand=False)
    return path


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"checking {path.name}", disable=size < 256 << 20,
        file=sys.stderr,
    ) as bar:  # fmt: skip
        while chunk := f.read(8 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _check(entry: OfficialModel, path: Path, *, by_hand: bool) -> None:
    """Check size and sha256 against the table (or, for a download, against the LFS oid the Hub announced,
    which ``huggingface_hub`` uses as the blob's name). A bad download is removed from the cache; a file put
    by hand is left where it is."""
    blob = path.resolve()
    expected = entry.sha256
    if expected is None and not by_hand and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        expected = blob.name
    problem = None
    if entry.size is not None and blob.stat().st_size != entry.size:
        problem = f"size {blob.stat().st_size} bytes, expected {entry.size}"
    elif expected is not None and (got := _sha256(blob)) != expected:
        problem = f"sha256 {got}, expected {expected}"
    elif expected is None:
        log.warning("%s: no sha256 recorded for it; its content is not verified", path)
    if problem is None:
        return
    if by_hand:
        raise CheckpointError(
            f"{path} is not the official {entry.filename} ({problem}); replace it with the file from {REPO_ID}"
        )
    for p in {path, blob}:
        p.unlink(missing_ok=True)
    raise CheckpointError(
        f"the download of {entry.filename} from {REPO_ID} failed its checksum ({problem}); it was removed from "
        "the cache: try again"
    )


def _convert(entry: OfficialModel, source: Path, out: Path) -> Path:
    print(f"openglip: converting {source.name} to {out} (once)", file=sys.stderr)
    cfg = entry.config()
    model = build_model(cfg)
    state, _ = read_checkpoint(source)
    load_into(model, state)
    save_safetensors(model, out, cfg)
    return out
