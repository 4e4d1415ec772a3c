"""Setting up an adv2 run: classifier, RTS savers, interpreters, the attacked images and their target maps.

Every trained artefact and every adversarial batch is cached as safetensors in the run directory, so a resumed
run (``resume=True``) skips finished work.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save

from .. import explainers as xexplainers
from ..data import ImageDataset, load_dataset
from ..explainers import Explainer
from ..explainers.rts import FeatureSaliencyNet, SaliencyNet, Saver
from ..explainers.rts_train import load_saver, save_saver, train_rts
from ..errors import ConfigError
from ..io import atomic_write_bytes, load_weights, save_weights
from ..maps import MapPostprocess
from ..models import build_model
from ..train import accuracy, train_classifier
from .config import Adv2Config
from .evaluate import explain_batches, logits_of
from .objective import InterpreterTerm, MaskTerm
from .targets import patch_maps, pick_class_examples, random_target_classes

log = logging.getLogger(__name__)


class Adv2Setup:
    """Data, classifier, interpreters, attacked images ``x`` (N,C,H,W) with true ``y`` and targets ``y_target``,
    calibration images ``x_cal``, benign and target maps per interpreter; plus the run's tensor cache."""

    def __init__(self, cfg: Adv2Config, run_dir: Path, resume: bool):
        self.cfg, self.run_dir, self.resume = cfg, run_dir, resume
        self.timing: dict[str, float] = {}
        self.posts = {n: MapPostprocess(pool=cfg.map_pool, norm=cfg.settings(n).norm) for n in cfg.interpreters}
        self.data: ImageDataset = load_dataset(cfg.dataset, **cfg.dataset_options)
        self.model = self._classifier()
        self.test_accuracy = accuracy(self.model, self.data.x_test, self.data.y_test)
        log.info("classifier %s on %s: test accuracy %.3f", cfg.classifier.arch, cfg.dataset, self.test_accuracy)
        self.savers: dict[str, Saver] = {}
        if "rts" in cfg.interpreters:
            self.savers["rts"] = self.saver("rts", cfg.rts.objective)
        self.explainers = {n: self.explainer(n) for n in cfg.interpreters}
        self._select_images()
        self.benign = {n: self.maps(n, self.x, self.y) for n in cfg.interpreters}
        self.targets = {n: self.target_maps(n) for n in cfg.interpreters}

    # ---- cache -------------------------------------------------------------------------------------------------
    def cached(self, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()`` once per run: stored as ``adv/<key>.safetensors``; reloaded when resuming."""
        path = self.run_dir / "adv" / f"{key}.safetensors"
        if self.resume and path.is_file():
            return load_file(str(path))["x"]
        start = time.perf_counter()
        out = make().detach().contiguous()
        self.timing[key] = time.perf_counter() - start
        atomic_write_bytes(path, save({"x": out.cpu()}))
        log.info("%s: %d inputs in %.1f s", key, len(out), self.timing[key])
        return out

    # ---- models ------------------------------------------------------------------------------------------------
    def _classifier(self) -> torch.nn.Module:
        c = self.cfg.classifier
        torch.manual_seed(self.cfg.seed)
        model = build_model(c.arch, self.data.input_shape, self.data.num_classes, **c.options)
        path = self.run_dir / "model.safetensors"
        if self.resume and path.is_file():
            load_weights(model, path)
        else:
            train_classifier(model, self.data.x_train, self.data.y_train, epochs=c.epochs, lr=c.lr,
                             batch_size=c.batch_size, seed=self.cfg.seed, progress=False)
            save_weights(model, path)
        return model.eval()

    def saver(self, key: str, objective, init: Saver | None = None) -> Saver:
        """The RTS saver ``key`` (``rts`` or ``rts_adv``), trained on the training set (from ``init``'s weights if
        given) or reloaded."""
        r = self.cfg.rts
        path = self.run_dir / f"{key}.safetensors"
        if self.resume and path.is_file():
            return load_saver(path)
        torch.manual_seed(self.cfg.seed)
        if r.encoder == "classifier":
            saver: Saver = FeatureSaliencyNet.for_classifier(self.model, self.data.input_shape, self.data.num_classes,
                                                             r.width, tuple(r.layers) or None)
        else:
            saver = SaliencyNet(self.data.in_channels, self.data.num_classes, width=r.width)
        if init is not None:
            saver.load_state_dict(init.state_dict())
        start = time.perf_counter()
        train_rts(saver, self.model, self.data.x_train, self.data.y_train, epochs=r.epochs, lr=r.lr,
                  batch_size=r.batch_size, weights=objective, seed=self.cfg.seed, progress=False)
        self.timing[f"train_{key}"] = time.perf_counter() - start
        save_saver(saver, path)
        return saver.eval()

    def adversarial_saver(self) -> Saver:
        r = self.cfg.rts
        init = self.savers["rts"] if r.adversarial_init == "rts" else None
        return self.saver("rts_adv", replace(r.objective, adv_weight=r.adversarial_weight), init)

    def explainer(self, name: str, saver: Saver | None = None) -> Explainer:
        options = dict(self.cfg.settings(name).options)
        if name == "rts":
            options["saver"] = saver or self.savers["rts"]
        return xexplainers.build(name, self.model, **options)

    def term(self, name: str, explainer: Explainer | None = None) -> InterpreterTerm:
        """The attack-loss term of interpreter ``name`` (MASK: Algorithm 1's stateful look-ahead)."""
        s = self.cfg.settings(name)
        e = explainer or self.explainers[name]
        if name == "mask":
            return MaskTerm(e, s.weight, self.posts[name], None, name, inner_steps=s.inner_steps)
        return InterpreterTerm(e, s.weight, self.posts[name], s.smooth_beta, name)

    # ---- images and maps ---------------------------------------------------------------------------------------
    def _select_images(self) -> None:
        cfg, data = self.cfg, self.data
        gen = torch.Generator().manual_seed(cfg.seed)
        pred = logits_of(self.model, data.x_test).argmax(1)
        correct = torch.nonzero(pred == data.y_test).flatten()
        correct = correct[torch.randperm(len(correct), generator=gen)]
        n_cal = cfg.detection.calibration_images if cfg.detection.enabled else 0
        if len(correct) < cfg.n_images + n_cal:
            raise ConfigError(f"only {len(correct)} correctly classified test images; lower n_images "
                             f"({cfg.n_images}) or detection.calibration_images ({n_cal})")
        self.index = correct[:cfg.n_images]
        self.x, self.y = data.x_test[self.index], data.y_test[self.index]
        self.x_cal = data.x_test[correct[cfg.n_images:cfg.n_images + n_cal]]
        self.y_target = random_target_classes(self.y, data.num_classes, gen)
        atomic_write_bytes(self.run_dir / "attack_set.safetensors",
                           save({"index": self.index.contiguous(), "x": self.x.contiguous(), "y": self.y.contiguous(),
                                 "y_target": self.y_target.contiguous()}))

    def maps(self, name: str, x: torch.Tensor, target: torch.Tensor | None = None,
             explainer: Explainer | None = None) -> torch.Tensor:
        """Raw maps of ``x`` by interpreter ``name`` for ``target`` (default: the classifier's prediction)."""
        if target is None:
            target = logits_of(self.model, x).argmax(1)
        return explain_batches(explainer or self.explainers[name], x, target, self.cfg.batch_size)

    def target_maps(self, name: str, explainer: Explainer | None = None) -> torch.Tensor:
        """The target maps of interpreter ``name`` for the configured kind (benign / class / patch)."""
        kind = self.cfg.target
        if kind == "benign":
            return self.benign[name] if explainer is None else self.maps(name, self.x, self.y, explainer)
        if kind == "patch":
            if not hasattr(self, "_patches"):
                self._patches = patch_maps(len(self.x), tuple(self.x.shape[-2:]), self.cfg.patch_fraction,
                                           torch.Generator().manual_seed(self.cfg.seed + 1))
            return self._patches
        if not hasattr(self, "_pool_index"):
            pool_pred = logits_of(self.model, self.data.x_train).argmax(1)
            self._pool_index = pick_class_examples(self.y_target, self.data.y_train, pool_pred == self.data.y_train,
                                                   torch.Generator().manual_seed(self.cfg.seed + 2))
        return self.maps(name, self.data.x_train[self._pool_index], self.y_target, explainer)
