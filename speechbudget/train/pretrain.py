"""``speechbudget pretrain``: HuBERT masked prediction on k-means targets, within a budget."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..config import TrainConfig
from ..data.kmeans import read_labels
from ..data.pool import seconds_by_corpus
from ..errors import SpeechBudgetError
from ..objectives.hubert import HubertModel
from . import distributed
from .setup import (
    check_train_inputs,
    dataset_for,
    dev_loader,
    encoder_cost_cached,
    load_train_cuts,
    make_data,
    new_encoder,
    training_cuts,
)
from .trainer import Trainer, claim_exp_dir


def count_clusters(cuts) -> int:
    """Checks every cut has labels (clear error otherwise) and returns max label + 1."""
    k = 0
    for c in cuts:
        labels = read_labels(c)
        if labels.size:
            k = max(k, int(labels.max()) + 1)
    return k


def check_first_labels(cfg: TrainConfig) -> None:
    """The first cut of ``train_cuts`` (and ``dev_cuts``) carries k-means labels: naming the prepared
    corpus instead of what `kmeans` wrote is the usual slip, caught before the run's folder is made."""
    for spec, what in ((cfg.train_cuts, "train_cuts"), (cfg.dev_cuts, "dev_cuts")):
        first = next(iter(load_train_cuts(spec, what)), None) if spec else None
        if first is None:
            continue
        try:
            read_labels(first)
        except SpeechBudgetError as e:
            raise SpeechBudgetError(str(e) if what == "train_cuts" else f"dev_cuts {spec}: {e}") from None


def build_model(cfg: TrainConfig, num_clusters: int) -> HubertModel:
    h = cfg.hubert
    return HubertModel(
        new_encoder(cfg),
        num_clusters,
        mask_prob=h.mask_prob,
        mask_length=h.mask_length,
        temperature=h.temperature,
        final_dim=h.final_dim,
        unmasked_weight=h.unmasked_weight,
        vtlp_warp=h.vtlp,
    )


def pretrain(cfg: TrainConfig, recipe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    dist = distributed.setup(cfg.device)
    lock = None
    try:
        check_train_inputs(cfg)
        check_first_labels(cfg)
        lock = claim_exp_dir(cfg.exp_dir)  # before anything is written there
        cuts = training_cuts(cfg, dist.is_main)  # lazy unless cut down: 60k hours need not fit in memory
        seen = count_clusters(cuts)
        num_clusters = cfg.hubert.num_clusters or seen
        if seen > num_clusters:
            raise SpeechBudgetError(f"labels go up to {seen - 1} but hubert.num_clusters is {num_clusters}")
        if cfg.dev_cuts:  # now, not at the validation after the whole budget
            try:
                dev_seen = count_clusters(load_train_cuts(cfg.dev_cuts, "dev_cuts"))
            except SpeechBudgetError as e:
                raise SpeechBudgetError(f"dev_cuts {cfg.dev_cuts}: {e}") from None
            if dev_seen > num_clusters:
                raise SpeechBudgetError(
                    f"dev_cuts labels go up to {dev_seen - 1} but the training targets have {num_clusters} "
                    "clusters: label dev_cuts with the k-means model of train_cuts"
                )
        model = build_model(cfg, num_clusters)
        cost = encoder_cost_cached(model.encoder, cfg.exp_dir, model.head_macs_per_frame())
        dataset = dataset_for(model.encoder, with_kmeans=True)
        sampler, loader = make_data(cfg, cuts, dataset, dist)
        by_corpus = seconds_by_corpus(cuts)  # a recipe's pool: hours of each corpus in the run card
        seconds = sum(by_corpus.values())
        pool = {k: round(v / 3600, 4) for k, v in by_corpus.items() if k}
        trainer = Trainer(
            cfg,
            model,
            loader=loader,
            sampler=sampler,
            dist=dist,
            cost=cost,
            epoch_seconds=seconds,
            stage="pretrain",
            recipe=recipe,
            valid_loader=dev_loader(cfg, dataset),
            card_extra={"unique_hours": seconds / 3600, **({"pool_hours": pool} if pool else {})},
        )
        return trainer.fit()
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(dist)
