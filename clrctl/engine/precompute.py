"""Precomputed features for a frozen body (``train.precompute``; fastai's ``precompute=True``).

In a stage where nothing but the classifier layer (the head, :func:`~clrctl.model.build.head_module`)
trains, no augmentation is on and the body behaves in training as in evaluation (no BatchNorm
in training mode, no dropout), the body's output for a sample never changes during the stage.
So it is computed once per sample, at the stage's first epoch, and the stage trains the head
alone on those features: :class:`FeatureSource` yields them in the training source's very
order (the same (seed, epoch) permutation), and the stage's net is the head. The step, the
loop and every callback are the same; what changes is what the stage trains on
(:meth:`~clrctl.engine.setup.Setup.trains_on`).

``auto`` decides per stage and conservatively (:func:`decide`): only where the result is the
slow path's within float rounding, and only where it pays (two or more whole epochs: in one,
every sample goes through the body once either way — so no bundled config changes); ``on``
also takes a one-epoch stage; ``off`` never. ``run.json`` records each stage's decision and
its reason (``precompute``).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from clrctl.data.sources import BatchSource, TensorSource
from clrctl.model.build import head_module

# Features kept at most (float32 bytes): beyond this the cache would crowd the device.
MAX_FEATURE_BYTES = 2 * 2**30

# Modules that behave differently in training: BatchNorm (batch statistics, running averages)
# and dropout (the head's own HeadDropout acts on the features, which is where it belongs).
_DROPOUT = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)


def decide(config, model: nn.Module, groups, stages, steps_per_epoch: int, input_shape: tuple[int, ...],
           num_samples: int, world_size: int = 1) -> list[dict[str, Any]]:
    """Per stage: ``{stage, used, reason}`` — whether its head trains on precomputed features
    (``input_shape``: a sample's, at the data set's own size; ``num_samples``: training samples)."""
    out, start = [], 0
    for stage in stages:
        length = stage.length(steps_per_epoch)
        shape = tuple(input_shape)
        if stage.image_size is not None:
            shape = (*shape[:-2], stage.image_size, stage.image_size)
        reason = _refusal(config, model, groups, stage, start, length, steps_per_epoch, world_size)
        if reason is None:
            reason = _head_refusal(model, shape, num_samples)
        out.append({"stage": stage.name, "used": reason is None,
                    "reason": reason or "the body is frozen and deterministic: its features are computed once"})
        start += length
    return out


def _refusal(config, model, groups, stage, start, length, spe, world_size) -> Optional[str]:
    """Why stage ``stage`` trains the slow way (None: it need not)."""
    train = config.train
    if train.precompute == "off":
        return "train.precompute: off"
    if not stage.freeze:
        return "the stage freezes nothing"
    head = head_module(model)
    head_params = {id(p) for p in model.get_submodule(head).parameters()} if head else set()
    trained = [p for g in groups if g.name not in stage.freeze for _, p in g.params]
    if not trained or any(id(p) not in head_params for p in trained):
        return f"the stage trains more than the head ({head or 'the model'})"
    name = config.model.name
    if ":" in name and not name.startswith("torchvision:"):
        return "a user model (module:callable) may behave differently in training"
    if config.dataset.augment:
        return "dataset.augment: the body sees other crops each epoch"
    if world_size > 1:
        return "distributed training"
    if train.autocast_dtype("cuda") or train.compile or train.channels_last:
        return "train.precision / compile / channels_last: the fast path computes the body otherwise"
    if config.optimizer.name.startswith("schedulefree") or stage.optimizer.name.startswith("schedulefree"):
        return "a Schedule-Free optimizer"
    if start % spe or length % spe:
        return "the stage does not span whole epochs"
    if length < 2 * spe and train.precompute == "auto":
        return "one epoch: every sample passes through the body once either way (train.precompute: on uses it)"
    body = [(n, m) for n, m in model.named_modules() if head and not (n == head or n.startswith(head + "."))]
    for module_name, module in body:
        if isinstance(module, _DROPOUT):
            return f"dropout in the body ({module_name})"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not (
                train.bn_freeze and not any(True for p in module.parameters(recurse=False) if _trains(p, groups, stage))):
            return f"BatchNorm in the body trains ({module_name}; train.bn_freeze: true fixes its statistics)"
    return None


def _trains(param, groups, stage) -> bool:
    return any(p is param for g in groups if g.name not in stage.freeze for _, p in g.params)


def _head_refusal(model: nn.Module, shape: tuple[int, ...], num_samples: int) -> Optional[str]:
    """Why the head alone on cached inputs would not give the model's logits (None: it would):
    the model's output must be its head applied once to what the head receives — checked in
    eval mode on a random batch, under a forked RNG — and the cache must fit in memory."""
    head = head_module(model)
    layer = model.get_submodule(head)
    seen: list[Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]), prepend=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # (no running statistics change, no dropout drawn; no copy of a large model)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x = torch.randn(2, *shape, device=device)
            out = model(x)
            handle.remove()
            again = layer(seen[0]) if len(seen) == 1 else None
    except Exception as err:  # noqa: BLE001 - a model that does not run on a random batch
        return f"the model fails on a random batch ({type(err).__name__})"
    finally:
        handle.remove()
        model.train(was_training)
    if again is None or again.shape != out.shape or not torch.allclose(out, again):
        return f"the model's output is not its classifier layer's ({head}) applied once"
    size = seen[0][0].numel() * 4 * num_samples
    if size > MAX_FEATURE_BYTES:
        return f"the features would take {size / 2**30:.1f} GiB (at most {MAX_FEATURE_BYTES / 2**30:.0f})"
    return None


class FeatureSource(BatchSource):
    """The body's outputs of a training source's samples, as that source would batch them:
    computed at the first :meth:`batches` (with the weights the stage starts from: after a
    resume, the checkpoint's), then a :class:`TensorSource` over them in the same (seed, epoch)
    order, with the same batch size and last batch."""

    def __init__(self, inner: BatchSource, model: nn.Module, head: str, seed: int) -> None:
        self.inner, self.model, self.head, self.seed = inner, model, head, seed
        self.num_samples, self.batch_size, self.device = inner.num_samples, inner.batch_size, inner.device
        self.drop_last = inner.drop_last
        self._cache: Optional[TensorSource] = None

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if self._cache is None:
            self._cache = self._compute()
        yield from self._cache.batches(epoch, start)

    def head(self, n: int) -> BatchSource:
        return self.inner.head(n)

    @torch.no_grad()
    def _compute(self) -> TensorSource:
        layer = self.model.get_submodule(self.head)
        captured: list[Tensor] = []
        handle = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()), prepend=True)
        was_training = self.model.training
        self.model.eval()  # (the body behaves alike in both modes, or this stage would not be here)
        features, labels = [], []
        try:
            for x, y in self.inner.head(self.inner.num_samples).batches(0):
                captured.clear()
                self.model(x)
                features.append(captured[0].float())
                labels.append(y)
        finally:
            handle.remove()
            self.model.train(was_training)
        return TensorSource(torch.cat(features), torch.cat(labels), self.batch_size, self.device, shuffle=True,
                            seed=self.seed, drop_last=self.drop_last)
