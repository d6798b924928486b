"""Settings of the shapes world as a training set (``openglip train ... shapes_image_size=96``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapesConfig:
    """How the built-in ``"shapes"`` data are rendered for a run; on the command line each field is
    ``shapes_<field>=value`` (the :mod:`openglip.data.resolve` convention for built-ins' settings)."""

    image_size: int = 128  # rendered image side (training and the val split of evaluation)
    epoch_size: int = 2000  # items per (virtual) epoch; every epoch renders new images
