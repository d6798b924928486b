"""The training loop, generic over tasks (:mod:`openglip.tasks`): AdamW with the task's parameter groups, warm-up
+ cosine/step decay, gradient clipping and accumulation, AMP, EMA, atomic checkpoints with exact resume, DDP under
``torchrun``. It imports no model family: what is trained, and how, is the task's business.

Run directory::

    out_dir/config.json                 resolved model, training and task configs
    out_dir/metrics.jsonl               one line per logged step (and per evaluation)
    out_dir/checkpoints/step_NNNNNNN.pt model, optimiser, scheduler, scaler, EMA, step, data position, RNG
    out_dir/checkpoints/last            name of the newest checkpoint
    out_dir/model.safetensors           final weights (the EMA's when EMA is on), loadable with load_model
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoints import MODEL_CONFIG_KEY
from ..config import TrainConfig
from ..device import resolve_device
from ..distributed import DistInfo, barrier, cleanup, init_distributed
from ..errors import UsageError
from ..files import atomic_write, write_text_atomic
from .optim import build_optimizer, lr_factor
from .sampler import ReplaySampler, ResumableSampler
from .state import ModelEMA, rng_state, seed_everything, set_rng_state

log = logging.getLogger("openglip.train")


RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "model.safetensors", "tb", "finetuned.safetensors",
             "wise.json")  # fmt: skip
# TrainConfig and task config fields a resumed run may change (how long, how often, where to look, and WiSE-FT's mixing weight,
# which `tune --resume --alpha X` re-applies to a finished run); any other change would make the folder hold
# two different runs
RESUMABLE_CHANGES = frozenset(
    {"out_dir", "max_steps", "time_budget", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every",
     "eval_images", "val_data", "num_workers", "tensorboard", "wise_alpha"}
)  # fmt: skip


class Trainer:
    """Trains whatever a task object describes (see :class:`openglip.tasks.Task`) on a dataset of items
    addressed by ``(epoch, index)`` keys (see :mod:`openglip.data`).

    Args:
        task: the model family: builds, loads, freezes, batches, computes losses, evaluates and exports.
        cfg: the training config.
        dataset: the training dataset; built from ``cfg.data`` by the caller.
        resume: continue from the newest checkpoint in ``cfg.out_dir``.
        overwrite: delete a previous run's files in ``cfg.out_dir`` and start again. Without ``resume`` or
            ``overwrite`` a directory that already holds a run is refused: two runs never mix in one folder.
        device: "cpu", "cuda" or None (GPU when available).
        model: an already built model to train instead of ``task.build_model()``.
    """

    def __init__(
        self,
        task,
        cfg: TrainConfig,
        dataset,
        *,
        resume: bool = False,
        overwrite: bool = False,
        device: str | None = None,
        model: torch.nn.Module | None = None,
    ):
        self.task, self.cfg = task, cfg
        self.device = resolve_device(device)
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._prepare_run_dir(resume=resume, overwrite=overwrite)
        if self.device.type == "cpu":
            # denormal floats appear in training and make CPU kernels ~50x slower; flushing them costs nothing
            torch.set_flush_denormal(True)
        seed_everything(cfg.seed)
        self.model = (model or task.build_model()).to(self.device)
        if cfg.init_weights:
            task.load_weights(self.model, cfg.init_weights)
        self.frozen = task.freeze(self.model, cfg.freeze)
        self.optimizer = build_optimizer(task.param_groups(self.model, cfg), self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        amp = cfg.amp if cfg.amp != "auto" else ("bf16" if self.device.type == "cuda" else "off")
        if amp not in ("off", "bf16", "fp16"):
            raise UsageError(f"amp must be auto, bf16, fp16 or off, not {cfg.amp!r}")
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.dataset = dataset
        self.step = 0
        self.items = 0  # items this rank has consumed (the sampler position)
        self.result: dict = {}
        if resume:
            self._resume()
        if cfg.compile:
            self._compile()
        self.ddp_model = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _prepare_run_dir(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to mix two runs in one directory; clean up what a kill mid-write left behind."""
        if resume and overwrite:
            raise UsageError("give --resume or --overwrite, not both")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UsageError(f"--out {self.out_dir} is a file; give a directory for the run")
        existing = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if existing and not resume and not overwrite:
            raise UsageError(
                f"{self.out_dir} already holds a run ({', '.join(existing)}); use --resume to continue it, "
                "--overwrite to start again there, or a new --out"
            )
        if self.dist.is_main:
            if overwrite:
                for name in existing:
                    path = self.out_dir / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            # temporary files of a checkpoint write that a kill interrupted (the checkpoint itself is intact)
            for orphan in self.ckpt_dir.glob(".*.tmp"):
                orphan.unlink(missing_ok=True)
        barrier(self.dist)

    def _compile(self) -> None:
        """``compile=true``: the model's tensor parts compiled in place (shapes vary with multi-scale training:
        dynamo makes them dynamic after the first recompilation)."""
        if not hasattr(self.model, "compile_parts"):
            raise UsageError(
                f"compile=true needs a GLIP model; {type(self.model).__name__} has no compile_parts"
            )
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self.model.compile_parts()

    # -- checkpoints ----------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        marker = self.ckpt_dir / "last"
        if marker.exists():
            path = self.ckpt_dir / marker.read_text().strip()
            if path.exists():
                return path
        found = sorted(self.ckpt_dir.glob("step_*.pt"))
        return found[-1] if found else None

    def _resume(self) -> None:
        path = self.latest_checkpoint()
        if path is None:
            if self.dist.is_main:
                log.info("no checkpoint in %s: starting a new run", self.ckpt_dir)
            return
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        # checkpoints written before the task configs were split off hold one flat train_config
        self._check_same_run({**(ckpt.get("train_config") or {}), **(ckpt.get("task_config") or {})})
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise UsageError(
                f"cannot resume from {path}: it holds another model ({str(err).splitlines()[0]}); resume with "
                "the run's own settings, or use --overwrite or a new --out"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.step, self.items = int(ckpt["step"]), int(ckpt["items"])
        rng = ckpt["rng"][self.dist.rank] if self.dist.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        set_rng_state(rng)
        if self.dist.is_main:
            self._truncate_metrics(self.step)
            log.info("resumed from %s at step %d", path, self.step)

    def _check_same_run(self, saved: dict) -> None:
        """Refuse to resume a run with settings that would make it another run (seed, data, lr, ...)."""
        now = {**dataclasses.asdict(self.cfg), **self.task.task_config_dict()}
        now = json.loads(json.dumps(now, default=str))
        saved = json.loads(json.dumps(saved, default=str))
        changed = [
            f"{k}: {saved[k]!r} -> {now[k]!r}"
            for k in now
            if k in saved and k not in RESUMABLE_CHANGES and saved[k] != now[k]
        ]
        if changed:
            raise UsageError(
                f"cannot resume the run in {self.out_dir} with other settings ({'; '.join(changed[:4])}); "
                "resume with its settings (see its config.json), or use --overwrite or a new --out"
            )

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint a resumed run restarts from."""
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
        write_text_atomic(path, "".join(line + "\n" for line in keep))

    def save_checkpoint(self) -> Path:
        """Write a checkpoint atomically (rank 0 writes; every rank contributes its RNG state)."""
        rngs = [rng_state()]
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        path = self.ckpt_dir / f"step_{self.step:07d}.pt"
        if self.dist.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "step": self.step,
                "items": self.items,
                "rng": rngs,
                MODEL_CONFIG_KEY: self.task.config_dict(),
                "train_config": dataclasses.asdict(self.cfg),
                "task_config": self.task.task_config_dict(),
            }
            atomic_write(path, lambda tmp: torch.save(state, tmp))
            write_text_atomic(self.ckpt_dir / "last", path.name)
            for old in sorted(self.ckpt_dir.glob("step_*.pt"))[: -max(self.cfg.keep_checkpoints, 1)]:
                old.unlink(missing_ok=True)
        barrier(self.dist)
        return path

    def final_weights(self) -> torch.nn.Module:
        """The model to export/evaluate: the EMA weights when EMA is on."""
        if self.ema is None:
            return self.model
        export = self.task.build_model()
        export.load_state_dict({k: v.to("cpu") for k, v in self.ema.shadow.items()})
        return export.to(self.device).eval()

    # -- loop -----------------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        position = {"seed": self.cfg.seed, "rank": self.dist.rank, "world_size": self.dist.world_size}
        ratio = getattr(self.dataset, "replay_ratio", None)  # a ReplayMix: a fixed share of replay items
        if hasattr(self.dataset, "sampler"):  # streamed shards: each rank and worker reads shards of its own
            sampler = self.dataset.sampler(
                **position, start=self.items, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers
            )
        elif ratio:
            sampler = ReplaySampler(
                self.dataset.target_size, self.dataset.replay_size, ratio, **position, start=self.items
            )
        else:
            sampler = ResumableSampler(len(self.dataset), **position, start=self.items)
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=self.task.collate_fn(),
            persistent_workers=self.cfg.num_workers > 0,
            # its own generator: starting an iterator must not draw from the global RNG (that would shift the
            # dropout masks of a resumed run against those of the uninterrupted run)
            generator=torch.Generator().manual_seed(self.cfg.seed + self.dist.rank),
        )

    def _train_mode(self) -> None:
        self.model.train()
        for m in self.model.children():
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()  # frozen parts keep eval-mode normalisation and no dropout

    def _forward_loss(self, batch) -> dict[str, torch.Tensor]:
        ctx = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype
            else contextlib.nullcontext()
        )
        with ctx:
            return self.task.losses(self.ddp_model, batch)

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        path = self.out_dir / "metrics.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def fit(self) -> dict:
        """Train to ``max_steps`` (or the time budget); returns the last logged metrics."""
        cfg = self.cfg
        self._start_run()
        self._bad_step = None
        self._train_mode()

        bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train", unit="step", disable=not self.dist.is_main,
            file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        start_time, window_t, window_items = time.time(), time.time(), 0
        last: dict = {}
        loader = iter(self._loader())
        while self.step < cfg.max_steps:
            if cfg.time_budget and time.time() - start_time > cfg.time_budget:
                log.info("time budget of %.0f s reached at step %d", cfg.time_budget, self.step)
                break
            sums, items = self._optimizer_step(loader)
            window_items += items
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._check_finite()
                values = dict(zip(sums, torch.stack(list(sums.values())).tolist()))  # the one host sync
                loss = sum(values.values())
                bar.set_postfix(loss=f"{loss:.3f}")
                elapsed = time.time() - window_t
                last = {
                    "step": self.step,
                    "loss": loss,
                    **values,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s": window_items * self.dist.world_size / max(elapsed, 1e-9),
                    "time": time.time() - start_time,
                }
                self._log(last)
                window_t, window_items = time.time(), 0
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self._check_finite()  # never write a checkpoint after a non-finite step
                self.save_checkpoint()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._evaluate()
        bar.close()
        return self._finish(last)

    def _start_run(self) -> None:
        """The run folder's ``config.json`` and, when asked for, the TensorBoard writer (main process only)."""
        self.tb = None
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        configs = {"model": self.task.config_dict(), "train": dataclasses.asdict(self.cfg),
                   "task": self.task.task_config_dict()}  # fmt: skip
        write_text_atomic(self.out_dir / "config.json", json.dumps(configs, indent=1))
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard package

                self.tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed: pip install tensorboard (continuing without it)")

    def _optimizer_step(self, loader) -> tuple[dict[str, torch.Tensor], int]:
        """One optimiser step over ``grad_accum`` micro-batches; returns the losses summed on the device (read
        once per log step, not per micro-batch) and the number of items trained on."""
        cfg = self.cfg
        sums: dict[str, torch.Tensor] = {}
        items = 0
        for micro in range(cfg.grad_accum):
            batch = next(loader).to(self.device)  # batches of any task provide .to(device)
            sync = micro == cfg.grad_accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx:
                losses = self._forward_loss(batch)
                total = sum(losses.values())
                self.scaler.scale(total / cfg.grad_accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / cfg.grad_accum
            self.items += len(batch)
            items += len(batch)
        self._watch_finite(sums)
        self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.clip_grad
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return sums, items

    def _finish(self, last: dict) -> dict:
        """The final checkpoint, the task's result written as ``model.safetensors``, the final evaluation."""
        self._check_finite()
        self.save_checkpoint()
        final = None
        if self.dist.is_main:
            final = self.final_weights()
            # a task may turn the trained weights into its result (WiSE-FT mixes them with the starting weights)
            final = self.task.finalize(final, self.step)
            self.task.export(final.cpu(), self.out_dir / "model.safetensors")
            final = final.to(self.device)
        self.result = {**last, **self._evaluate(final)}
        cleanup(self.dist)
        return self.result

    # -- non-finite losses, checked without a host sync per step ------------------------------------------
    def _watch_finite(self, sums: dict[str, torch.Tensor]) -> None:
        """Remember (on the device) the first step whose loss is not finite; :meth:`_check_finite` raises."""
        values = torch.stack(list(sums.values())).detach()
        bad = ~torch.isfinite(values).all()
        if self._bad_step is None or list(sums) != self._loss_names:  # first step, or another set of losses
            if self._bad_step is not None:
                self._check_finite()  # report a bad step of the old set before forgetting its values
            self._bad_step = torch.full((), -1, dtype=torch.long, device=bad.device)
            self._bad_losses, self._loss_names = values, list(sums)
        first = bad & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.step, self._bad_step)
        self._bad_losses = torch.where(first, values, self._bad_losses)

    def _check_finite(self) -> None:
        """Raise ``FloatingPointError`` naming the first non-finite step (checked at log, checkpoint and end
        steps: a few wasted steps at most, and no checkpoint is ever written from non-finite weights)."""
        if self._bad_step is None:
            return
        step = int(self._bad_step)
        if step >= 0:
            losses = dict(zip(self._loss_names, self._bad_losses.tolist()))
            raise FloatingPointError(f"non-finite loss at step {step}: {losses}")

    def _evaluate(self, model: torch.nn.Module | None = None) -> dict:
        """Metrics of ``model`` (default: :meth:`final_weights`), logged to metrics.jsonl."""
        if not self.dist.is_main:
            barrier(self.dist)
            return {}
        metrics = self.task.evaluate(model if model is not None else self.final_weights(), self.step)
        if metrics:
            self._log({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        self._train_mode()
        barrier(self.dist)
        return metrics
