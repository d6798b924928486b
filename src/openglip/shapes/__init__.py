"""The built-in synthetic world "shapes": coloured shapes with a base/novel split, rendered on demand.

* :mod:`.world`: vocabulary, split rule, samples, caption grammar; :mod:`.placement`: what every renderer shares
* :mod:`.renderers`: the renderers by name: :mod:`.render` (+ :mod:`.look`) and :mod:`.render_alt`
* :mod:`.formats`: exports (COCO, ODVG, and the benchmarks' layouts); :mod:`.ladder`: GLIP's corpora stand-ins
* :mod:`.language`: questions and captions; :mod:`.datasets`: training sets; :mod:`.evaluation`: its val set
* :mod:`.photos`: the real-photo check set (package data ``real_photos.json``)

Importing this package registers ``"shapes"`` as a built-in dataset name (:mod:`openglip.data.resolve`).
"""

from ..data.resolve import register_builtin as _register_builtin
from .builtin import NAME, ShapesData
from .config import ShapesConfig
from .formats import to_coco, to_odvg, write_dataset
from .render import COLOUR_RGB, ShapesWorld
from .render_alt import AltShapesWorld
from .renderers import RENDERERS
from .world import (
    BASE,
    CATEGORIES,
    COLOURS,
    NOVEL,
    RELATIONS,
    SHAPES,
    SIZES,
    GroundingCaption,
    ShapesSample,
    draw_category,
    make_captions,
)

__all__ = [
    "BASE",
    "CATEGORIES",
    "COLOURS",
    "COLOUR_RGB",
    "NOVEL",
    "RELATIONS",
    "RENDERERS",
    "SHAPES",
    "SIZES",
    "AltShapesWorld",
    "GroundingCaption",
    "ShapesConfig",
    "ShapesData",
    "ShapesSample",
    "ShapesWorld",
    "draw_category",
    "make_captions",
    "to_coco",
    "to_odvg",
    "write_dataset",
]

_register_builtin(NAME, ShapesData())
