"""The shapes demo's training recipe (``python -m openglip.demo shapes``), which the ladder corpora's
``ladder.json`` and the benchmarks reuse."""

from __future__ import annotations

import dataclasses

from ..config import GLIPTaskConfig, TrainConfig, glip_nano

DEFAULT_STEPS = 480  # 8-12 minutes on 2 CPU cores
DEFAULT_BUDGET = 0.0  # no time limit: the figures are those of every step (--budget S cuts the run, loudly)


def demo_configs(
    budget: float = DEFAULT_BUDGET,
    out: str = "outputs/shapes_demo",
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
):
    """``(ModelConfig, TrainConfig, GLIPTaskConfig)``: glip_nano (ImageNet EfficientNet-Lite0 + MiniLM, both from
    PyPI) fine-tuned on 128-px shapes images."""

    # trained on 112-144 px renderings, evaluated a little larger (160 px): small hexagons need the pixels
    model_cfg = dataclasses.replace(glip_nano(), min_size=160, max_size=320)
    train_cfg = TrainConfig(
        data="shapes",
        out_dir=out,
        max_steps=steps,
        batch_size=8,
        lr=5e-4,
        warmup_steps=50,
        schedule="step",  # a short run learns best at full rate, then cools down for the last 15%
        milestones=(0.85,),
        freeze="text",  # MiniLM stays as pretrained; the tower's text layers adapt
        checkpoint_every=100,
        log_every=20,
        ema_decay=0.999,
        train_min_sizes=(112, 128, 144),
        train_max_size=240,
        time_budget=budget,
        seed=seed,
    )
    return model_cfg, train_cfg, GLIPTaskConfig(normalized_token_targets=False, num_negatives=20)
