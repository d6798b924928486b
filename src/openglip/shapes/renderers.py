"""The renderers of the shapes world, by name (``openglip data shapes --renderer``, ``openglip evaluate
--renderer``): each is a class with the :class:`~openglip.shapes.render.ShapesWorld` interface
(``Renderer(split=, image_size=, min_objects=, max_objects=, seed=).sample(index) -> ShapesSample``)."""

from __future__ import annotations

from ..errors import UsageError
from .render import ShapesWorld
from .render_alt import AltShapesWorld

RENDERERS: dict[str, type] = {
    "shapes": ShapesWorld,  # the world's own renderer, the one models train on
    "alt": AltShapesWorld,  # a second, independent look of the same world
}


def get_renderer(name: str) -> type:
    """The renderer class called ``name`` (a key of :data:`RENDERERS`)."""
    if name not in RENDERERS:
        raise UsageError(f"unknown shapes renderer {name!r}; use one of {', '.join(RENDERERS)}")
    return RENDERERS[name]
