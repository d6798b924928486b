"""OpenGLIP: open-vocabulary grounded object detection (GLIP, GLIPv2, RegionCLIP) in pure PyTorch.

Quick start::

    import openglip
    det = openglip.load_model("glip_t", weights="glip_tiny_model_o365_goldg.pth")
    dets = det.predict("photo.jpg", "person. red car. traffic light.")
"""

from . import shapes as _shapes  # noqa: F401  (registers the built-in dataset "shapes")
from .api import Detector, load_model
from .config import ModelConfig, apply_overrides, get_preset
from .images import ImageError
from .prompt_tuning import TunedPrompt, load_tuned_prompt
from .prompts import Prompt, PromptError, parse_prompt
from .structures import Detections

__version__ = "0.1.0"

__all__ = [
    "Detections",
    "Detector",
    "ImageError",
    "ModelConfig",
    "Prompt",
    "PromptError",
    "TunedPrompt",
    "__version__",
    "apply_overrides",
    "get_preset",
    "load_model",
    "load_tuned_prompt",
    "parse_prompt",
]
