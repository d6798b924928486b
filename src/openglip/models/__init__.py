"""Model parts. ``build_model(cfg)`` assembles a :class:`GLIP` from a :class:`~openglip.config.ModelConfig`."""

from .glip import GLIP, GLIPOutput, TextFeatures, build_model
from .postprocess import PostProcessor

__all__ = ["GLIP", "GLIPOutput", "PostProcessor", "TextFeatures", "build_model"]
