"""HuBERT k-means targets: cluster frame features, store the cluster ids in the cut manifests.

Iteration 1 clusters 39-dim MFCCs (13 + deltas + delta-deltas, 100 Hz) or the stored 80-dim
fbank; iteration 2 clusters a hidden layer of an already-pretrained encoder. Labels land in
``cut.custom["kmeans"]`` as a space-separated integer string, the format icefall's k2SSL reads,
so our manifests interoperate with its recipes.

Alignment rule for 100 Hz features and a 50 Hz (25 Hz) model: output frame ``i`` gets the label
of feature frame ``i * 2`` (``i * 4``), the 10 ms frame where the output frame's receptive field
starts. That is fairseq HuBERT's ``feat2tar_ratio`` rule, and for the wav2vec2 CNN it is exact:
output frame ``i`` starts at sample ``320 i``, as does 100 Hz frame ``2 i`` (both 25 ms wide).
The conv2d fbank front end also starts output frame ``i`` at input frame ``2 i``. Labels are
then trimmed, or padded by repeating the last one, to the model's output length for the cut.

Normalisation: every model standardises features with the mean and std of its training sample
(stored in the model), so MFCC c0 or loud fbank bins do not dominate the distances; optional
per-utterance mean normalisation (``cmn``) removes channel offsets first and is off by default,
as in HuBERT.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from lhotse import CutSet, Mfcc, MfccConfig
from lhotse.utils import compute_num_frames

from .. import atomic
from .. import progress as progress_mod
from ..atomic import atomic_output
from ..errors import SpeechBudgetError
from .manifests import corpus_files, load_cuts, save_manifest

KINDS = ("mfcc", "fbank", "layer")
FEATURE_RATE_HZ = 100.0  # 10 ms shift for both MFCC and the stored fbank
SAMPLE_RATE = 16000
NUM_CEPS = 13
PathLike = Union[str, Path]


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------


@functools.cache
def mfcc_extractor() -> Mfcc:
    return Mfcc(MfccConfig(num_ceps=NUM_CEPS, frame_shift=0.01, sampling_rate=SAMPLE_RATE))


def deltas(x: np.ndarray, window: int = 2) -> np.ndarray:
    """Kaldi-style regression deltas over time, edges replicated, so the output keeps T frames."""
    t = x.shape[0]
    padded = np.pad(x, ((window, window), (0, 0)), mode="edge")
    num = sum(
        n * (padded[window + n : window + n + t] - padded[window - n : window - n + t])
        for n in range(1, window + 1)
    )
    return num / (2 * sum(n * n for n in range(1, window + 1)))


def frame_features(cut, kind: str = "mfcc", cmn: bool = False) -> np.ndarray:
    """(T, D) float32 frames at 100 Hz: ``mfcc`` 39-dim (HuBERT iteration 1) or stored ``fbank``."""
    if kind == "mfcc":
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        c = cut.compute_features(mfcc_extractor())
        feats = np.concatenate([c, deltas(c), deltas(deltas(c))], axis=1)
    elif kind == "fbank":
        if not cut.has_features:
            raise SpeechBudgetError(
                f"cut {cut.id} has no stored fbank; prepare without --no-features or use kind mfcc"
            )
        feats = cut.load_features()
    else:
        raise SpeechBudgetError(f"unknown frame feature kind {kind!r}; choose 'mfcc' or 'fbank'")
    feats = np.asarray(feats, dtype=np.float32)
    if cmn and len(feats):
        feats = feats - feats.mean(axis=0, keepdims=True)
    return feats


def _encoder_input(cut, encoder) -> np.ndarray:
    """The cut as the encoder wants it: (T, F) fbank at 100 Hz or (S, 1) samples at 16 kHz."""
    if encoder.input_rate_hz == SAMPLE_RATE:
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        return np.asarray(cut.load_audio()[0], dtype=np.float32)[:, None]
    feats = frame_features(cut, "fbank")
    if feats.shape[1] != encoder.input_dim:
        raise SpeechBudgetError(
            f"cut {cut.id} has {feats.shape[1]}-dim features but the encoder takes {encoder.input_dim}"
        )
    return feats


def _pad_batch(arrays: List[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
    batch = torch.zeros(len(arrays), int(lengths.max()), arrays[0].shape[1])
    for i, a in enumerate(arrays):
        batch[i, : len(a)] = torch.from_numpy(a)
    return batch, lengths


def _batches(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    batch: List[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pick_layer(layers: Optional[Sequence[torch.Tensor]], layer: int) -> torch.Tensor:
    n = len(layers) if layers else 0
    if not 1 <= layer <= n:
        raise SpeechBudgetError(f"layer {layer} is out of range: this encoder has {n} layers (use 1..{n})")
    return layers[layer - 1]


def layer_features(
    encoder, cuts: Iterable, layer: int, batch_size: int = 8, device: Union[str, torch.device] = "cpu"
) -> Iterator[Tuple[str, np.ndarray]]:
    """(cut_id, (T', D)) for k-means iteration 2: output of block ``layer`` (1-based, as HuBERT's
    "layer 6" means after six blocks), trimmed to each cut's output length."""
    was_training = encoder.training
    encoder.eval().to(device)
    try:
        for batch in _batches(cuts, batch_size):
            x, lengths = _pad_batch([_encoder_input(c, encoder) for c in batch])
            with torch.no_grad():
                out = encoder(x.to(device), lengths.to(device), return_layers=True)
            hidden = _pick_layer(out.layers, layer).float().cpu().numpy()
            for i, cut in enumerate(batch):
                yield cut.id, hidden[i, : int(out.lengths[i])]
    finally:
        encoder.train(was_training)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


@dataclass
class KMeansModel:
    """Cluster centers in standardised feature space plus what is needed to featurise alike."""

    centers: np.ndarray  # (k, D), in standardised space
    mean: np.ndarray  # (D,) of the training sample
    std: np.ndarray  # (D,)
    kind: str = "mfcc"
    layer: Optional[int] = None
    cmn: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)  # seed, backend, fit_frames, inertia, ...

    @property
    def num_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def _standardise(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != self.dim:
            raise SpeechBudgetError(
                f"k-means model expects (T, {self.dim}) {self.kind} frames, got shape {tuple(frames.shape)}"
            )
        return (frames - self.mean) / self.std

    def _distances(self, x: np.ndarray) -> np.ndarray:
        """Squared distances (T, k) via |x|^2 - 2 x.c + |c|^2 (clipped: rounding can go below 0)."""
        c = self.centers
        d = (x * x).sum(1, keepdims=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
        return np.maximum(d, 0.0)

    def predict(self, frames: np.ndarray, chunk: int = 32768) -> np.ndarray:
        """Nearest-center ids (T,) int64, in chunks so a long utterance never needs (T, k) at once."""
        x = self._standardise(frames)
        out = np.empty(len(x), dtype=np.int64)
        for s in range(0, len(x), chunk):
            out[s : s + chunk] = self._distances(x[s : s + chunk]).argmin(1)
        return out

    def inertia(self, frames: np.ndarray) -> float:
        """Mean squared distance of frames to their nearest center (standardised space)."""
        x = self._standardise(frames)
        return float(self._distances(x).min(1).mean()) if len(x) else 0.0

    def describe(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "cmn": self.cmn,
            "num_clusters": self.num_clusters,
            "dim": self.dim,
            **self.meta,
        }

    def save(self, path: PathLike) -> Path:
        """``<path>.npz`` (arrays + metadata; all ``load`` needs) and a readable ``<path>.json``."""
        path = Path(path).with_suffix(".npz")
        with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: savez would add ".npz"
            np.savez(
                f,
                centers=self.centers,
                mean=self.mean,
                std=self.std,
                meta=np.array(json.dumps(self.describe())),
            )
        atomic.write_json(path.with_suffix(".json"), self.describe())
        return path

    @classmethod
    def load(cls, path: PathLike) -> KMeansModel:
        path = Path(path).with_suffix(".npz")
        if not path.is_file():
            raise SpeechBudgetError(f"k-means model {path} does not exist; run `speechbudget kmeans` first")
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["meta"]))
                centers, mean, std = z["centers"], z["mean"], z["std"]
        except (OSError, KeyError, ValueError) as e:
            raise SpeechBudgetError(f"{path} is not a speechbudget k-means model ({e})") from None
        fixed = {k: info.pop(k) for k in ("kind", "layer", "cmn")}
        for k in ("num_clusters", "dim"):
            info.pop(k, None)
        return cls(centers=centers, mean=mean, std=std, meta=info, **fixed)


# ---------------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------------


class Reservoir:
    """A uniform sample of at most ``size`` frames from a stream of (T, D) arrays (Algorithm R)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen = size, 0
        self.rng = np.random.default_rng(seed)
        self.buf: Optional[np.ndarray] = None
        self.filled = 0

    def add(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames, dtype=np.float32)
        if len(frames) == 0:
            return
        if self.buf is None:
            self.buf = np.empty((self.size, frames.shape[1]), dtype=np.float32)
        elif frames.shape[1] != self.buf.shape[1]:
            raise SpeechBudgetError(
                f"feature dims differ between utterances: {self.buf.shape[1]} vs {frames.shape[1]}"
            )
        take = min(self.size - self.filled, len(frames))
        self.buf[self.filled : self.filled + take] = frames[:take]
        self.filled += take
        rest = frames[take:]
        if len(rest):
            # frame with global index g replaces a random slot with probability size / (g + 1);
            # numpy keeps the last write for repeated slots, exactly as a sequential loop would
            g = self.seen + take + np.arange(len(rest))
            slot = self.rng.integers(0, g + 1)
            keep = slot < self.size
            self.buf[slot[keep]] = rest[keep]
        self.seen += len(frames)

    def sample(self) -> np.ndarray:
        return self.buf[: self.filled] if self.buf is not None else np.empty((0, 0), np.float32)


#: fewer sampled frames a cluster and the centres are single frames (and k-means++ over 100k clusters
#: runs for hours without a word): a typo like --num-clusters 100000 is refused before any work
MIN_FRAMES_PER_CLUSTER = 10


def _fit_centers(x: np.ndarray, k: int, seed: int, backend: str) -> np.ndarray:
    if backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(
            n_clusters=k,
            init="k-means++",
            n_init=3,
            batch_size=10_000,
            max_iter=100,
            max_no_improvement=100,
            random_state=seed,
        )
        return km.fit(x).cluster_centers_.astype(np.float32)
    if backend == "faiss":
        try:
            import faiss
        except ImportError:
            raise SpeechBudgetError(
                "backend 'faiss' needs faiss-cpu (pip install faiss-cpu); or use 'sklearn'"
            ) from None
        km = faiss.Kmeans(x.shape[1], k, niter=100, nredo=3, seed=seed, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(km.centroids, dtype=np.float32)
    raise SpeechBudgetError(f"unknown k-means backend {backend!r}; choose 'sklearn' or 'faiss'")


def fit_kmeans(
    feature_iter: Iterable[Union[np.ndarray, Tuple[str, np.ndarray]]],
    num_clusters: int,
    max_frames: int = 200_000,
    seed: int = 0,
    backend: str = "sklearn",
    kind: str = "mfcc",
    layer: Optional[int] = None,
    cmn: bool = False,
) -> KMeansModel:
    """Fit on a uniform, seeded sample of at most ``max_frames`` frames.

    ``feature_iter`` yields (T, D) arrays or ``(cut_id, array)`` pairs (as :func:`layer_features`
    does). ``kind``/``layer``/``cmn`` only record how the frames were made, so labelling repeats it.
    """
    if num_clusters < 2:
        raise SpeechBudgetError(f"num_clusters must be at least 2, got {num_clusters}")
    if max_frames < MIN_FRAMES_PER_CLUSTER * num_clusters:
        raise SpeechBudgetError(
            f"max_frames ({max_frames}) must be at least {MIN_FRAMES_PER_CLUSTER} x num_clusters "
            f"({num_clusters}): raise max_frames or use fewer clusters"
        )
    res = Reservoir(max_frames, seed)
    for item in feature_iter:
        res.add(item[1] if isinstance(item, tuple) else item)
    x = res.sample()
    if len(x) < MIN_FRAMES_PER_CLUSTER * num_clusters:
        raise SpeechBudgetError(
            f"only {len(x)} frames to fit {num_clusters} clusters (at least {MIN_FRAMES_PER_CLUSTER} a "
            "cluster); use more audio or fewer clusters"
        )
    mean = x.mean(0)
    std = np.maximum(x.std(0), 1e-5).astype(np.float32)  # a constant dim must not divide by zero
    xs = (x - mean) / std
    centers = _fit_centers(xs, num_clusters, seed, backend)
    model = KMeansModel(
        centers,
        mean.astype(np.float32),
        std,
        kind=kind,
        layer=layer,
        cmn=cmn,
        meta={"seed": seed, "backend": backend, "fit_frames": int(len(x)), "seen_frames": int(res.seen)},
    )
    model.meta["inertia"] = round(model.inertia(x), 6)
    return model


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def label_step(source_rate_hz: float, target_rate_hz: float) -> int:
    """How many source frames per label; only whole ratios keep frames aligned."""
    ratio = source_rate_hz / target_rate_hz
    step = int(round(ratio))
    if step < 1 or abs(ratio - step) > 1e-6:
        raise SpeechBudgetError(
            f"cannot make {target_rate_hz:g} Hz labels from {source_rate_hz:g} Hz features: "
            "the ratio must be a whole number"
        )
    return step


def labels_for_cut(
    frame_labels: np.ndarray,
    target_rate_hz: float,
    num_out_frames: Optional[int] = None,
    source_rate_hz: float = FEATURE_RATE_HZ,
) -> np.ndarray:
    """Labels at the model's output rate: label ``i`` is frame ``i * step`` (see module docstring),
    then trimmed or edge-padded to ``num_out_frames``. A large mismatch means a wrong rate or length
    rule, so it is an error rather than silent padding."""
    frame_labels = np.asarray(frame_labels)
    sub = frame_labels[:: label_step(source_rate_hz, target_rate_hz)]
    if num_out_frames is None or num_out_frames == len(sub):
        return sub
    if abs(len(sub) - num_out_frames) > max(4, 0.05 * num_out_frames):
        raise SpeechBudgetError(
            f"{len(sub)} labels at {target_rate_hz:g} Hz but the model outputs {num_out_frames} frames; "
            "check label_rate_hz and the output-length rule"
        )
    if num_out_frames < len(sub):
        return sub[:num_out_frames]
    if len(sub) == 0:
        raise SpeechBudgetError("no labels to pad: the utterance produced no feature frames")
    return np.concatenate([sub, np.full(num_out_frames - len(sub), sub[-1], dtype=sub.dtype)])


def encoder_out_len(encoder) -> Callable[[int], int]:
    """``out_len(num_input_frames)`` for an encoder (inputs in its own unit: fbank frames or samples).

    Uses the front end's ``output_lengths`` (and a Zipformer's ``output_downsample``), checked
    once against a real forward; an encoder without them is asked by running it on zeros.
    """

    def probe(n: int) -> int:
        was_training = encoder.training
        encoder.eval()
        try:
            p = next(encoder.parameters())
            x = torch.zeros(1, n, encoder.input_dim, device=p.device)
            with torch.no_grad():
                out = encoder(x, torch.tensor([n], device=p.device))
            return int(out.lengths[0])
        finally:
            encoder.train(was_training)

    def formula(n: int) -> int:
        lengths = encoder.frontend.output_lengths(torch.tensor([n]))
        if hasattr(encoder, "output_downsample"):
            lengths = encoder.output_downsample.output_lengths(lengths)
        return int(lengths[0])

    check_n = int(4.13 * encoder.input_rate_hz)  # ~4 s, an odd count so rounding rules show
    if hasattr(getattr(encoder, "frontend", None), "output_lengths") and formula(check_n) == probe(check_n):
        return formula
    return functools.lru_cache(maxsize=4096)(probe)


def num_inputs(cut, input_rate_hz: float) -> int:
    """Input frames a model sees for this cut: samples for 16 kHz input, else 10 ms frames."""
    if input_rate_hz == SAMPLE_RATE:
        return int(cut.num_samples)
    if cut.has_features:
        return int(cut.num_frames)
    return compute_num_frames(cut.duration, 1.0 / input_rate_hz, SAMPLE_RATE)


def labels_to_string(labels: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in labels)


def read_labels(cut) -> np.ndarray:
    """The cluster ids stored by :func:`write_labels` (int64): the one parser of ``custom["kmeans"]``."""
    if not cut.custom or "kmeans" not in cut.custom:
        raise SpeechBudgetError(
            f"cut {cut.id} has no k-means labels (custom['kmeans']); make them with "
            "`speechbudget kmeans CUTS --out DIR` and train on the labeled cuts it writes"
        )
    return np.array(cut.custom["kmeans"].split(), dtype=np.int64)


def write_labels(cuts: Iterable, labels: Dict[str, np.ndarray], out_path: PathLike) -> Path:
    """A copy of ``cuts`` with ``custom["kmeans"]`` set on every cut, saved atomically."""
    out, missing = [], []
    for cut in cuts:
        if cut.id not in labels:
            missing.append(cut.id)
            continue
        out.append(cut.with_custom("kmeans", labels_to_string(labels[cut.id])))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SpeechBudgetError(f"no k-means labels for {len(missing)} cut(s): {shown}")
    out_path = Path(out_path)
    save_manifest(CutSet.from_cuts(out), out_path)
    return out_path


def cluster_usage(labels_iter: Iterable[np.ndarray], num_clusters: int) -> Dict[str, Any]:
    """How evenly the clusters are used: a few busy clusters make weak targets."""
    counts = np.zeros(num_clusters, dtype=np.int64)
    for lab in labels_iter:
        lab = np.asarray(lab, dtype=np.int64)
        if len(lab) and (lab.min() < 0 or lab.max() >= num_clusters):
            raise SpeechBudgetError(
                f"label outside 0..{num_clusters - 1}: was the model trained with another k?"
            )
        counts += np.bincount(lab, minlength=num_clusters)
    total = int(counts.sum())
    if total == 0:
        raise SpeechBudgetError("no labels to measure cluster usage on")
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "entropy_bits": round(entropy, 4),
        "max_entropy_bits": round(float(np.log2(num_clusters)), 4),
        "perplexity": round(2.0**entropy, 2),
        "empty_clusters": int((counts == 0).sum()),
        "frames": total,
        "counts": counts.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# the whole stage
# ---------------------------------------------------------------------------------------------


def split_name(path: Path) -> str:
    m = re.fullmatch(r"cuts_(.+)\.jsonl(\.gz)?", path.name)
    return m.group(1) if m else path.name.split(".")[0]


def input_manifests(cuts_paths: Union[PathLike, Sequence[PathLike]]) -> Dict[str, Path]:
    """split -> manifest, from files and/or corpus folders (their ``cuts_*.jsonl.gz``)."""
    paths = [cuts_paths] if isinstance(cuts_paths, (str, Path)) else list(cuts_paths)
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(corpus_files(p))
        elif p.is_file():
            files.append(p)
        else:
            raise SpeechBudgetError(f"{p} does not exist; run `speechbudget prepare` first")
    out: Dict[str, Path] = {}
    for f in files:
        name = split_name(f)
        if name in out:
            raise SpeechBudgetError(f"two manifests for split {name!r}: {out[name]} and {f}")
        out[name] = f
    return out


def _fit_subset(cuts: List, max_frames: int, seed: int) -> List:
    """A seeded random subset of utterances with about ``max_frames`` 10 ms frames, so fitting on a
    large corpus featurises only what the reservoir could keep."""
    order = np.random.default_rng(seed).permutation(len(cuts))
    chosen, frames = [], 0
    for i in order:
        if frames >= max_frames:
            break
        chosen.append(cuts[i])
        frames += int(cuts[i].duration * FEATURE_RATE_HZ)
    return chosen


def _tracked(items, on: bool, description: str):
    return progress_mod.track(items, total=len(items), description=description) if on else items


def _features(
    cuts: List,
    kind: str,
    cmn: bool,
    encoder,
    layer: Optional[int],
    batch_size: int,
    device,
    show: bool,
    description: str,
) -> Iterator[Tuple[str, np.ndarray]]:
    """(cut_id, frames) for every cut, in order: 100 Hz frames, or layer features at the encoder rate."""
    cuts = _tracked(cuts, show, description)
    if kind == "layer":
        yield from layer_features(encoder, cuts, layer, batch_size, device)
    else:
        for cut in cuts:
            yield cut.id, frame_features(cut, kind, cmn)


def _check_args(kind: str, encoder, layer: Optional[int]) -> None:
    if kind not in KINDS:
        raise SpeechBudgetError(f"unknown k-means feature kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "layer" and (encoder is None or layer is None):
        raise SpeechBudgetError("kind 'layer' (iteration 2) needs an encoder and a layer number")


def run_kmeans(
    cuts_paths: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    kind: str = "mfcc",
    num_clusters: int = 100,
    max_frames: int = 200_000,
    seed: int = 0,
    encoder=None,
    layer: Optional[int] = None,
    label_rate_hz: Optional[float] = None,
    out_len: Optional[Callable[[int], int]] = None,
    progress: bool = True,
    fit_split: str = "train",
    cmn: bool = False,
    backend: str = "sklearn",
    batch_size: int = 8,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, Any]:
    """Fit k-means on ``fit_split`` (or the only manifest given), label every split, write
    ``out_dir/kmeans_<kind>_<k>.{npz,json}`` and ``out_dir/cuts_<split>.jsonl.gz``.

    ``label_rate_hz`` defaults to the encoder's frame rate, else 50 Hz. ``out_len`` maps a cut's
    input length (fbank frames, or samples for a 16 kHz-input encoder) to the model's output
    frames; with an encoder and no ``out_len`` it is derived from that encoder; with neither,
    labels are only subsampled (ceil(T / step) of them).
    """
    start = time.time()
    _check_args(kind, encoder, layer)
    splits = input_manifests(cuts_paths)
    if fit_split not in splits and len(splits) > 1:
        raise SpeechBudgetError(f"no {fit_split!r} split to fit on among {', '.join(splits)}; pass fit_split")
    fit_on = fit_split if fit_split in splits else next(iter(splits))
    if label_rate_hz is None:
        label_rate_hz = float(encoder.frame_rate_hz) if encoder is not None else 50.0
    source_rate = float(encoder.frame_rate_hz) if kind == "layer" else FEATURE_RATE_HZ
    label_step(source_rate, label_rate_hz)  # fail before any work if the rates cannot align
    input_rate = float(encoder.input_rate_hz) if encoder is not None else FEATURE_RATE_HZ
    if out_len is None and encoder is not None:
        out_len = encoder_out_len(encoder)

    cutsets = {name: list(load_cuts(path)) for name, path in splits.items()}
    fit_cuts = _fit_subset(cutsets[fit_on], max_frames, seed)
    model = fit_kmeans(
        _features(
            fit_cuts, kind, cmn, encoder, layer, batch_size, device, progress, f"k-means fit ({fit_on})"
        ),
        num_clusters,
        max_frames,
        seed,
        backend,
        kind=kind,
        layer=layer,
        cmn=cmn,
    )
    model.meta.update({"fit_split": fit_on, "fit_utterances": len(fit_cuts), "label_rate_hz": label_rate_hz})
    model_path = model.save(Path(out_dir) / f"kmeans_{kind}_{num_clusters}.npz")

    summary: Dict[str, Any] = {
        "model": str(model_path),
        "model_json": str(model_path.with_suffix(".json")),
        **model.describe(),
        "splits": {},
    }
    for name, cuts in cutsets.items():
        by_id = {c.id: c for c in cuts}
        labels: Dict[str, np.ndarray] = {}
        for cut_id, feats in _features(
            cuts, kind, cmn, encoder, layer, batch_size, device, progress, f"k-means labels ({name})"
        ):
            n_out = out_len(num_inputs(by_id[cut_id], input_rate)) if out_len is not None else None
            labels[cut_id] = labels_for_cut(model.predict(feats), label_rate_hz, n_out, source_rate).astype(
                np.int32
            )
        path = write_labels(cuts, labels, Path(out_dir) / f"cuts_{name}.jsonl.gz")
        summary["splits"][name] = {
            "cuts": len(cuts),
            "path": str(path),
            "usage": cluster_usage(labels.values(), num_clusters),
        }
    summary["usage"] = summary["splits"][fit_on]["usage"]
    summary["seconds"] = round(time.time() - start, 2)
    return summary
