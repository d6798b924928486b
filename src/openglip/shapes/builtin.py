"""The shapes world as the built-in dataset ``"shapes"`` of every command (registered with
:func:`openglip.data.resolve.register_builtin` when :mod:`openglip.shapes` is imported)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..config import apply_overrides
from ..data.transforms import shapes_train_transforms
from ..errors import UsageError
from .config import ShapesConfig
from .datasets import ShapesCaptionDataset, ShapesDataset, ShapesVQADataset
from .evaluation import evaluate_shapes
from .language import ANSWERS, shapes_caption_items, shapes_vqa_items

NAME = "shapes"


@dataclass(frozen=True)
class ShapesData:
    """What a run gets from ``data="shapes"`` / ``val_data="shapes"``: training sets, transforms, evaluation.

    Attributes:
        config: how the world is rendered (:class:`ShapesConfig`).
    """

    config: ShapesConfig = field(default_factory=ShapesConfig)
    grounded_captions: bool = (
        True  # its whole-image captions carry a box per phrase (task=caption grounds them)
    )

    def configure(self, overrides: Iterable[str]) -> ShapesData:
        """A copy with ``shapes_<field>=value`` overrides applied to its :class:`ShapesConfig`."""
        prefix = f"{NAME}_"
        items = [item[len(prefix) :] if item.startswith(prefix) else item for item in overrides]
        return dataclasses.replace(self, config=apply_overrides(self.config, items))

    @staticmethod
    def train_transforms(**kwargs):
        """The world's training transforms: crops, blur and JPEG besides the usual ones, so that a model does
        not learn its one renderer's look (keywords of :func:`~openglip.data.transforms.shapes_train_transforms`)."""
        return shapes_train_transforms(**kwargs)

    def train_dataset(self, task: str, model_cfg, cfg, transform, to_tensor, task_cfg=None):
        """The training set of ``task`` (``"glip"``, ``"vqa"`` or ``"caption"``) for the run ``cfg``
        (``task_cfg``: the GLIP task's config, whose prompt settings the detection items follow)."""

        size, image_size = self.config.epoch_size, self.config.image_size
        common = {"size": size, "transform": transform, "to_tensor": to_tensor, "image_size": image_size}
        if task == "glip":
            return ShapesDataset(**common, grounding_ratio=task_cfg.grounding_ratio, num_negatives=task_cfg.num_negatives,
                                 seed=cfg.seed, with_masks=model_cfg.mask_head)  # fmt: skip
        if task == "vqa":
            return ShapesVQADataset(**common, seed=cfg.seed)
        if task == "caption":
            return ShapesCaptionDataset(**common, seed=cfg.seed)
        raise UsageError(f"the shapes world has no training data for task {task!r}")

    def evaluate(self, detector, cfg) -> dict:
        """Box AP (all / base / novel) and grounding recall on ``cfg.eval_images`` images of the val split."""

        return evaluate_shapes(detector, num_images=cfg.eval_images, image_size=self.config.image_size)

    def evaluate_detector(
        self, detector, *, num_images: int, image_size: int, renderer: str, tuned_prompt=None
    ):
        """``openglip evaluate --data shapes``: :func:`~openglip.shapes.evaluation.evaluate_shapes`."""

        return evaluate_shapes(detector, num_images=num_images, image_size=image_size, renderer=renderer,
                               tuned_prompt=tuned_prompt)  # fmt: skip

    def answers(self) -> list[str]:
        """The answer vocabulary of the world's questions."""

        return list(ANSWERS)

    def vqa_items(self, num_images: int):
        """``[(image, question, answers, question_type), ...]`` of the val split."""

        return shapes_vqa_items(num_images, image_size=self.config.image_size)

    def caption_items(self, num_images: int):
        """``[(sample, references), ...]`` of the val split."""

        return shapes_caption_items(num_images, image_size=self.config.image_size)
