"""Evaluation of a trained encoder: the disentanglement scores where the data has factors, the latent
report, heatmaps, and a record of how the numbers were produced.

Used by `python main.py --train False --eval_metrics True` and by `--eval_step N` during training.
`evaluate(encoder, ...)` takes any method's encoder: a torch.nn.Module with `z_dim` and
`encode(x) -> (codes (B, z), logvar (B, z) or None)` for x float (B, C, 64, 64) in [0, 1] (a VAE returns
(μ, logσ²); InfoGAN's recognition network and PCA/ICA return (code estimate, None)). It writes, in
`out_dir`, atomically (a kill leaves the old file or the new one, never a damaged one):

    eval_<iter>.json                          everything: scores, latent report, matrices, provenance
    eval_<iter>.txt                           the same, readable
    eval_<iter>_dci_importance.png            heatmaps, latents z0.. × factors (data with factors only)
    eval_<iter>_mutual_information.png
    eval_<iter>_udr_sample.npz                codes (and per-latent KL) of UDR's 1,000 images, drawn from the
                                              protocol seed: studies/report.py scores the models of a setting
                                              against each other with them (UDR, udr.py)

A run at `scale` other than 1 writes eval_<iter>_scale<scale>.* instead, marked as not comparable with
published numbers.
"""

import copy
import functools
import hashlib
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from evaluation import metrics, sparse_encoder, udr
from utils import atomic_write, autocast

REPORT_IMAGES = 10_000  # images behind the latent report at scale 1 (fewer at smaller scales, at least 1,000)
MIN_REPORT_IMAGES = 1_000
PROTOCOL_NAME = "disentanglement_lib (Locatello et al. 2019), as implemented in metrics.py"


class IndexedFactors:
    """The dataset's ground-truth interface, handing out image *indices* instead of images.

    Paired with CodeCache, each distinct image is encoded at most once: the published
    protocol draws about 2.9 million images for the five scores, but dSprites holds only
    737,280, so caching by index gives the same codes for a fraction of the encoder passes.
    """

    def __init__(self, data):
        self.data = data
        self.factor_names, self.factor_sizes = data.factor_names, data.factor_sizes
        if hasattr(data, "observe"):  # observations that draw random numbers (SmallNORB): metrics.observe
            self.observe = data.observe

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        return self.data.sample_factors(n, rng)

    def images_for_factors(self, factors: np.ndarray) -> torch.Tensor:
        """(n, F) factor classes -> (n,) dataset indices (the rows holding those factors)."""
        return self.data.indices_for_factors(factors)


class CodeCache:
    """The representation the scores use: dataset indices (n,) -> codes (n, z), numpy; also keeps logσ².

    Each image is encoded once and kept. A β-VAE-like encoder on the CPU runs through SparseEncoder
    (dSprites is blank outside the sprite, and the blank needs no convolving) from a channels-last copy
    (the caller's model keeps its layout); any other encoder through its own encode. Batches of 1,024,
    several at once on a CPU (map_batches). `autocast_dtype` is the run's --precision (None: fp32).
    `encoded` counts the images encoded.
    """

    def __init__(self, encoder, data, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 batch_size: int = 1024, progress: bool = False):
        self.encoder = copy.deepcopy(encoder).eval()
        self.sparse = None
        if device.type == "cpu" and sparse_encoder.supports(self.encoder):
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
            self.sparse = sparse_encoder.SparseEncoder(self.encoder)
        self.data, self.device, self.batch_size = data, device, batch_size
        self.autocast_dtype, self.progress = autocast_dtype, progress
        self.codes = torch.zeros(len(data), encoder.z_dim)
        self.logvar: torch.Tensor | None = None  # allocated when the encoder gives one
        self.known = torch.zeros(len(data), dtype=torch.bool)
        self.encoded = 0

    def __call__(self, indices: torch.Tensor) -> np.ndarray:
        self.encode(indices)
        return self.codes[indices].numpy()

    def encode(self, indices: torch.Tensor, description: str = "encoding") -> None:
        """Encode the images among `indices` not encoded yet, in index order (on dSprites, neighbouring
        indices share shape, scale and orientation, so SparseEncoder's windows stay tight)."""
        indices = torch.unique(torch.as_tensor(indices)[~self.known[indices]])  # sorted
        if len(indices) == 0:
            return
        chunks = list(indices.split(self.batch_size))
        with tqdm(total=len(indices), desc=description, unit="img", unit_scale=True, leave=False,
                  disable=not self.progress) as bar:
            for chunk, (codes, logvar) in zip(chunks, map_batches(self._encode_batch, chunks, self.device),
                                              strict=True):
                self.codes[chunk] = codes
                if logvar is not None:
                    if self.logvar is None:
                        self.logvar = torch.zeros_like(self.codes)
                    self.logvar[chunk] = logvar
                self.known[chunk] = True
                self.encoded += len(chunk)
                bar.update(len(chunk))

    def _encode_batch(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dataset indices (B,) -> codes and logσ² (or None), (B, z) fp32 on the CPU."""
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):  # both are per thread
            images = self.data.get(chunk).to(self.device)  # (B, C, 64, 64) as stored, uint8 for dSprites
            if self.sparse is not None:
                codes, logvar = self.sparse.encode(images, self.data.scale)
            else:
                codes, logvar = self.encoder.encode(images.float() * self.data.scale)
        return codes.float().cpu(), None if logvar is None else logvar.float().cpu()


def map_batches(encode_batch, batches: list, device: torch.device):
    """encode_batch over batches, results in order. On a CPU where torch uses several threads, as many
    batches run at once, in threads with one torch thread each: the encoder's many small operations then
    need no OpenMP barriers, and a core taken by another process slows one batch instead of every
    operation (1.3× the speed of one batch at a time with two threads each, on 2 cores; eval_bench.py)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or len(batches) < 2:
        yield from map(encode_batch, batches)
        return
    torch.set_num_threads(1)  # for the worker threads, which read it when they start their first operation
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encode") as pool:
            yield from pool.map(encode_batch, batches)
    finally:
        torch.set_num_threads(threads)


def report_indices(num_images: int, seed: int, scale: float) -> torch.Tensor:
    """The images behind the latent report: REPORT_IMAGES × scale of them (at least MIN_REPORT_IMAGES),
    drawn without repeats from the seed."""
    count = min(num_images, max(MIN_REPORT_IMAGES, round(REPORT_IMAGES * scale)))
    return torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:count]


def udr_indices(data, seed: int) -> torch.Tensor:
    """The images of UDR's sample, (udr.NUM_POINTS,) dataset indices drawn from RandomState(seed): by their
    factors, in the library's batches of 10, where the data has factors; uniformly otherwise. Every model
    evaluated with the same protocol seed on the same data gets the same images."""
    rng = np.random.RandomState(seed)
    if getattr(data, "has_factors", False):
        return data.indices_for_factors(udr.sample_factor_batches(data, rng))
    return torch.from_numpy(rng.randint(len(data), size=udr.NUM_POINTS).astype(np.int64))


def write_udr_sample(path: Path, cache: "CodeCache", indices: torch.Tensor) -> None:
    """codes (n, z) and, for an encoder with a posterior, each latent's mean KL (z,) on those images (n,)."""
    write_udr_arrays(path, indices, cache.codes[indices], None if cache.logvar is None else cache.logvar[indices])


def write_udr_arrays(path: Path, indices: torch.Tensor, codes: torch.Tensor, logvar: torch.Tensor | None) -> None:
    """UDR's sample file from the images' dataset indices (n,), their codes (n, z) and logσ² (n, z) or None."""
    arrays = {"indices": indices.numpy(), "codes": codes.numpy()}
    if logvar is not None:
        logvar = logvar.double().numpy()
        arrays["kl"] = (0.5 * (arrays["codes"].astype(np.float64) ** 2 + np.exp(logvar) - logvar - 1)).mean(axis=0)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def evaluate(encoder, data, device: torch.device, step: int, out_dir: Path, seed: int = 0,
             scale: float = 1.0, autocast_dtype: torch.dtype | None = None, dci_estimator: str = "gbt",
             provenance: dict | None = None, progress: bool = True) -> dict:
    """Score `encoder` on `data`; write the evaluation files (see the top) and return the whole result.

    autocast_dtype is the run's --precision: the encoder runs in the arithmetic it was trained in (None:
    fp32, codes exact to float rounding). `provenance` holds what only the caller knows (see
    _provenance): the checkpoint, the precision's reason, the method, model, dataset name and path, the
    run's config. `progress` shows a progress bar per stage; the score table is printed at the end. A
    subset of a dataset (an object with `.full`, as --subset makes) is scored on the whole dataset. A dSprites
    variant (data with `observe_chunks`: colour, noise or scream drawn per observation) has no code cache:
    every image is rendered where disentanglement_lib draws it and encoded (_evaluate_observed).
    Returns {'iter', 'scores' and 'summary' (data with factors), 'latents', 'matrices', 'provenance',
    'note' (data without factors)}.
    """
    start = time.perf_counter()
    if getattr(data, "full", None) is not None:
        data = data.full  # a --subset is scored on the dataset it was drawn from
    if hasattr(data, "observe_chunks"):  # a dSprites variant: new pixels at every draw, no code cache
        return _evaluate_observed(encoder, data, device, step, out_dir, seed, scale, autocast_dtype,
                                  dci_estimator, provenance, progress, start)
    has_factors = getattr(data, "has_factors", False)
    cache = CodeCache(encoder, data, device, autocast_dtype, progress=progress)
    ground_truth = IndexedFactors(data) if has_factors else None
    reported = report_indices(len(data), seed, scale)
    udr_sample = udr_indices(data, seed)

    # Encoding: every image the protocol will ask for, once, in index order.
    if has_factors and metrics.images_drawn(scale) >= len(data):
        needed = torch.arange(len(data))  # the protocol touches nearly every image
    elif has_factors:
        drawn = [ground_truth.images_for_factors(f) for f in metrics.protocol_draws(ground_truth, seed, scale)]
        needed = torch.cat(drawn + [reported, udr_sample])
    else:
        needed = torch.cat([reported, udr_sample])
    cache.encode(needed)
    encoding_seconds = time.perf_counter() - start

    result: dict = {"iter": step}
    if has_factors:
        result["scores"] = metrics.evaluate_all(ground_truth, cache, seed=seed, scale=scale,
                                                dci_estimator=dci_estimator, progress=progress)
    logvar = cache.logvar
    return _finish(result, data, cache.codes[reported], None if logvar is None else logvar[reported], reported,
                   udr_sample, cache.codes[udr_sample], None if logvar is None else logvar[udr_sample], cache,
                   device, step, out_dir, seed, scale, autocast_dtype, dci_estimator, provenance, progress, start,
                   encoding_seconds)


def _finish(result: dict, data, report_codes: torch.Tensor, report_logvar: torch.Tensor | None,
            reported: torch.Tensor, udr_sample: torch.Tensor, udr_codes: torch.Tensor,
            udr_logvar: torch.Tensor | None, codes_source, device: torch.device, step: int, out_dir, seed: int,
            scale: float, autocast_dtype, dci_estimator: str, provenance: dict | None, progress: bool,
            start: float, encoding_seconds: float | None) -> dict:
    """evaluate()'s common end, from the scores (in result, where the data has factors) and the codes of the
    latent report's images and of UDR's sample: the latent report, matrices, provenance and the files.
    `codes_source` (a CodeCache, or what stands for one) tells the provenance how the codes were made."""
    has_factors = "scores" in result
    report_start = time.perf_counter()
    with tqdm(total=1, desc="latent report", leave=False, disable=not progress) as bar:
        factors = _factors_of(data, reported.numpy()) if has_factors else None
        result["latents"] = metrics.latent_report(
            report_codes.numpy(), None if report_logvar is None else report_logvar.numpy(),
            factors, getattr(data, "factor_names", None))
        bar.update()
    report_seconds = time.perf_counter() - report_start
    z_dim = report_codes.shape[1]
    if has_factors:
        if encoding_seconds is not None:  # None: each score's images were drawn and encoded within its time
            result["scores"]["seconds"]["encoding"] = encoding_seconds
        result["scores"]["seconds"].update(latent_report=report_seconds, total=time.perf_counter() - start)
        result["summary"] = metrics.summary_scores(result["scores"])
        result["matrices"] = _matrices(result["scores"], z_dim, data.factor_names)
    else:
        result["matrices"] = {}
        result["note"] = ("this dataset has no ground-truth factors, so only the latent report is given; "
                          "the disentanglement scores need factor labels (dSprites has them).")
    result["provenance"] = _provenance(provenance or {}, codes_source, data, device, step, seed, scale,
                                       autocast_dtype, dci_estimator, len(reported))
    write_result(result, Path(out_dir), step, scale)
    write_udr_arrays(Path(out_dir) / f"{result_stem(step, scale)}_udr_sample.npz", udr_sample, udr_codes,
                     udr_logvar)
    tqdm.write(format_result(result))
    return result


# ----------------------------------------------------------------------------------------- drawn observations


class ObservedCodes:
    """The representation the scores use on data whose every draw renders new pixels (the dSprites colour
    and noisy variants): images are handed in as they are drawn (`add`, which gives back their observation
    ids, 0, 1, ... in draw order) and encoded in batches; ids (n,) -> codes (n, z), numpy.

    Nothing is cached by dataset index, since the same factors give other pixels at the next draw: every
    drawn image is encoded (images_drawn(scale) of them for the scores, about 2.95 million at scale 1), and
    only its code is kept (z float32 numbers; logσ² too with keep_logvar). Images wait until `batch_size` per
    thread are pending (512 × 3 × 64 × 64 float32 = 24 MiB each), then run through the encoder's own encode
    (no SparseEncoder: noise leaves no blank), in threads on a CPU (map_batches)."""

    def __init__(self, encoder, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 keep_logvar: bool = False, capacity: int = 0, batch_size: int = 512, bar=None):
        self.encoder = copy.deepcopy(encoder).eval()
        self.sparse = None  # provenance: encoded with encode()
        self.device, self.autocast_dtype, self.batch_size = device, autocast_dtype, batch_size
        self.keep_logvar, self.bar = keep_logvar, bar
        self._codes = torch.zeros(capacity, encoder.z_dim)
        self._logvar: torch.Tensor | None = None
        self.count = 0  # observations given an id
        self.encoded = 0  # observations encoded (ids 0 .. encoded - 1)
        self._pending: list[torch.Tensor] = []
        self._pending_count = 0

    @property
    def codes(self) -> torch.Tensor:
        return self._codes[:self.encoded]

    @property
    def logvar(self) -> torch.Tensor | None:
        return None if self._logvar is None else self._logvar[:self.encoded]

    def add(self, images: torch.Tensor) -> np.ndarray:
        """Float images (k, C, 64, 64) in [0, 1] -> their observation ids (k,); encoded when a batch is full."""
        ids = np.arange(self.count, self.count + len(images), dtype=np.int64)
        self.count += len(images)
        self._pending.append(images)
        self._pending_count += len(images)
        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        if self._pending_count >= self.batch_size * threads:
            self.flush()
        return ids

    def flush(self) -> None:
        """Encode every pending image."""
        if not self._pending:
            return
        images = torch.cat(self._pending)
        self._pending, self._pending_count = [], 0
        for codes, logvar in map_batches(self._encode_batch, list(images.split(self.batch_size)), self.device):
            end = self.encoded + len(codes)
            if end > len(self._codes):
                self._codes = torch.cat([self._codes, torch.zeros(max(end, 2 * len(self._codes)) - len(self._codes),
                                                                  self._codes.shape[1])])
            self._codes[self.encoded:end] = codes
            if logvar is not None and self.keep_logvar:
                if self._logvar is None or len(self._logvar) < len(self._codes):
                    grown = torch.zeros_like(self._codes)
                    if self._logvar is not None:
                        grown[:len(self._logvar)] = self._logvar
                    self._logvar = grown
                self._logvar[self.encoded:end] = logvar
            self.encoded = end
            if self.bar is not None:
                self.bar.update(len(codes))

    def _encode_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):  # both are per thread
            codes, logvar = self.encoder.encode(images.to(self.device))
        return codes.float().cpu(), None if logvar is None else logvar.float().cpu()

    def __call__(self, ids) -> np.ndarray:
        self.flush()
        return self._codes[torch.from_numpy(np.asarray(ids, dtype=np.int64))].numpy()


class ObservedFactors:
    """The ground-truth interface for such data, handing out observation ids instead of images.

    `observe` (metrics.observe: where disentanglement_lib calls sample_observations_from_factors, after the
    factors, from the same random state) renders the observations with the library's draws from that state
    (the data's observe_chunks), hands them to `codes` and returns the factors followed by each image's id.
    `images_for_factors` gives those ids back, for `codes` to look up. The scores' labels are the factors."""

    def __init__(self, data, codes: ObservedCodes):
        self.data, self.codes = data, codes
        self.factor_names, self.factor_sizes = data.factor_names, data.factor_sizes

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        return self.data.sample_factors(n, rng)

    def observe(self, factors: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        """(n, F) factors -> (n, F + 1) rows: the factors and the id of the image drawn for them."""
        ids = self.observe_indices(self.data.indices_for_factors(factors).numpy(), rng)
        return np.column_stack([np.asarray(factors, dtype=np.int64), ids])

    def observe_indices(self, indices: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        """The images of dataset indices (n,), drawn as one library call from rng -> their ids (n,)."""
        ids = [self.codes.add(images) for images in self.data.observe_chunks(indices, rng)]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def images_for_factors(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows)[:, -1]


def _evaluate_observed(encoder, data, device: torch.device, step: int, out_dir, seed: int, scale: float,
                       autocast_dtype, dci_estimator: str, provenance: dict | None, progress: bool,
                       start: float) -> dict:
    """evaluate() for data whose observations draw pixels of their own (data.observe_chunks): every image is
    rendered where the library draws it, from the same random state, and encoded (ObservedCodes).

    The latent report's images (report_indices) get their colours or noise from RandomState(seed), in one
    draw; UDR's sample is drawn as the library draws it (factors, then the observations, 10 at a time);
    each score from its own RandomState(seed), as for any dataset."""
    has_factors = getattr(data, "has_factors", False)
    reported = report_indices(len(data), seed, scale)
    total = len(reported) + udr.NUM_POINTS + (metrics.images_drawn(scale) if has_factors else 0)
    with tqdm(total=total, desc="drawing and encoding", unit="img", unit_scale=True, leave=False,
              disable=not progress) as bar:
        report = ObservedCodes(encoder, device, autocast_dtype, keep_logvar=True, capacity=len(reported), bar=bar)
        ObservedFactors(data, report).observe_indices(reported.numpy(), np.random.RandomState(seed))
        report.flush()
        sample = ObservedCodes(encoder, device, autocast_dtype, keep_logvar=True, capacity=udr.NUM_POINTS, bar=bar)
        sampler, rng = ObservedFactors(data, sample), np.random.RandomState(seed)
        if has_factors:
            rows = udr.sample_factor_batches(sampler, rng)
            udr_sample = data.indices_for_factors(metrics.labels(sampler, rows))
        else:
            udr_sample = torch.from_numpy(rng.randint(len(data), size=udr.NUM_POINTS).astype(np.int64))
            sampler.observe_indices(udr_sample.numpy(), rng)
        sample.flush()
        result: dict = {"iter": step}
        encoded = report.encoded + sample.encoded
        if has_factors:
            codes = ObservedCodes(encoder, device, autocast_dtype, capacity=metrics.images_drawn(scale), bar=bar)
            result["scores"] = metrics.evaluate_all(ObservedFactors(data, codes), codes, seed=seed, scale=scale,
                                                    dci_estimator=dci_estimator, progress=progress)
            encoded += codes.encoded
    # What the provenance reads of a CodeCache: the encoder, its path, whether it has a posterior, the count.
    provenance_codes = SimpleNamespace(encoder=report.encoder, sparse=None, codes=report.codes,
                                       logvar=report.logvar, encoded=encoded)
    return _finish(result, data, report.codes[:len(reported)], report.logvar, reported, udr_sample,
                   sample.codes, sample.logvar, provenance_codes, device, step, out_dir, seed, scale,
                   autocast_dtype, dci_estimator, provenance, progress, start, None)


# ----------------------------------------------------------------------------------------- result parts


def _factors_of(data, indices: np.ndarray) -> np.ndarray:
    """(n,) dataset indices -> (n, F) factor classes: the dataset's factors_of, or, for a dSprites-like object
    without one, its latents_classes less the leading colour column."""
    if hasattr(data, "factors_of"):
        return data.factors_of(indices)
    return data.latents_classes[indices][:, 1:]


def _matrices(scores: dict, z_dim: int, factor_names) -> dict:
    """The latents × factors matrices, labelled, for heatmaps (files and visdom)."""
    rows, columns = metrics.latent_names(z_dim), list(factor_names)
    return {
        "dci_importance": {"matrix": scores["dci"]["importance"], "rows": rows, "columns": columns,
                           "title": "DCI importance (gradient-boosted trees; each factor's column sums to 1)"},
        "mutual_information": {"matrix": scores["mig"]["mutual_information"], "rows": rows, "columns": columns,
                               "title": "mutual information, nats (MIG's codes in 20 bins)"},
    }


def _provenance(given: dict, cache: CodeCache, data, device: torch.device, step: int, seed: int, scale: float,
                autocast_dtype, dci_estimator: str, report_images: int) -> dict:
    """How the numbers were produced: `given` (from the caller: checkpoint, precision_reason, method, model,
    dataset name and path, config) completed with the protocol, the precision used, the dataset's file and
    fingerprint, the encoder, the software and the machine."""
    counts = metrics.protocol(scale)
    counts["dci"]["estimator"] = dci_estimator
    dataset = dict(given.get("dataset") or {})
    dataset.update(images=len(data), **_dataset_identity(dataset.get("path"), data))
    precision = {None: "fp32", torch.bfloat16: "bf16"}.get(autocast_dtype, str(autocast_dtype))
    observed = {} if not hasattr(data, "observe_chunks") else {"observations": (
        f"dSprites {data.variant}: every drawn image rendered with disentanglement_lib's draws from the score's "
        "random state, after the factors, and encoded (no code cache); the latent report's colours or noise "
        "from RandomState(seed)")}
    return {
        "protocol": {**observed,
            "name": PROTOCOL_NAME, "scale": scale, "comparable_with_published": scale == 1.0,
            "note": None if scale == 1.0 else
            f"scale {scale:g}: every sample count is {scale:g} of the published protocol's; "
            "not comparable with published numbers",
            "sample_counts": counts, "dci_estimator": dci_estimator, "latent_report_images": report_images,
            "images_drawn": metrics.images_drawn(scale) if getattr(data, "has_factors", False) else 0,
            "images_encoded": cache.encoded, "seed": seed,
            "udr_sample": {"images": udr.NUM_POINTS, "batch_size": udr.BATCH_SIZE,
                           "file": f"{result_stem(step, scale)}_udr_sample.npz"},
        },
        "precision": {"used": precision, "reason": given.get("precision_reason"),
                      "last_layer": "fp32 (the codes are not rounded to bf16)" if cache.sparse is not None
                      and precision == "bf16" else precision},
        "seed": given.get("seed", seed),
        "checkpoint": given.get("checkpoint") or {"path": None, "iteration": step},
        "method": given.get("method"),
        "model": given.get("model"),
        "config": given.get("config"),
        "dataset": dataset,
        "encoder": {"class": type(cache.encoder).__name__, "z_dim": cache.codes.shape[1],
                    "has_logvar": cache.logvar is not None,
                    "path": "SparseEncoder (exact to float rounding)" if cache.sparse is not None else "encode()"},
        "software": {"python": platform.python_version(), **{name: _version(name) for name in
                                                             ("torch", "numpy", "scikit-learn", "numba")}},
        "machine": {"device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": torch.get_num_threads(),
                    "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")},
        "command": " ".join(sys.argv),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _dataset_identity(path, data) -> dict:
    """Where the data came from: for a file, whether dsprites_gen.py made it and its sha256; for a folder
    of images, the sha256 of its file list with sizes (hashing every image would take minutes)."""
    if not path:
        return {"origin": None, "fingerprint": None}
    path = Path(path)
    if path.is_file() and not hasattr(data, "latents_classes"):  # Shapes3D, MPI3D: the official file, checked
        return {"origin": "the file as given (its format checked when loaded)",
                "fingerprint": {"sha256": _file_sha256(path), "of": "the file"}}
    if path.is_file():
        from loaders import dsprites_gen
        generated = dsprites_gen.is_generated(path)
        origin = ("generated by dsprites_gen.py" if generated else "not made by dsprites_gen.py (the real file)"
                  if generated is False else "unknown (no readable metadata entry)")
        return {"origin": origin, "fingerprint": {"sha256": _file_sha256(path), "of": "the file"}}
    files = getattr(data, "files", None)
    files = sorted(files) if files is not None else sorted(p for p in path.rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(path)}\t{p.stat().st_size}\n" for p in files)
    return {"origin": "image folder",
            "fingerprint": {"sha256": hashlib.sha256(listing.encode()).hexdigest(),
                            "of": f"the list of its {len(files)} image files with their sizes"}}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.cache
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of a file, once per process for each (path, size, mtime, inode): --eval_step evaluations hash
    the dataset once (35 MB in about 0.1 s here)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- files


def result_stem(step: int, scale: float) -> str:
    """eval_<iter>, or eval_<iter>_scale<scale> for a scale other than 1 (not comparable with papers)."""
    return f"eval_{step}" if scale == 1.0 else f"eval_{step}_scale{scale:g}"


def write_result(result: dict, out_dir: Path, step: int, scale: float) -> dict[str, Path]:
    """Write the JSON, the text and the heatmaps, each atomically; returns what was written, by kind."""
    stem = result_stem(step, scale)
    paths = {"json": out_dir / f"{stem}.json", "txt": out_dir / f"{stem}.txt"}
    text = json.dumps(_plain(result), indent=2)
    atomic_write(paths["json"], lambda f: f.write(text.encode()))
    atomic_write(paths["txt"], lambda f: f.write(format_result(result).encode()))
    for name, matrix in result.get("matrices", {}).items():
        png = heatmap_png(np.asarray(matrix["matrix"], dtype=float), matrix["rows"], matrix["columns"],
                          f"{matrix['title']}\n{stem}")
        paths[name] = out_dir / f"{stem}_{name}.png"
        atomic_write(paths[name], lambda f, png=png: f.write(png))
    return paths


def heatmap_png(matrix: np.ndarray, rows: list[str], columns: list[str], title: str) -> bytes:
    """A labelled heatmap (rows × columns) with each value written in its cell, as PNG bytes. matplotlib's
    object API renders with Agg and leaves pyplot's global backend alone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.2 + 1.1 * len(columns), 1.2 + 0.45 * len(rows)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("factor")
    axes.set_ylabel("latent")
    axes.set_title(title, fontsize=9)
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                  color="black" if value > middle else "white")
    figure.colorbar(image, ax=axes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def format_result(result: dict) -> str:
    """A readable account: how it was produced, the scores (when present), one row per latent."""
    lines = [f"Evaluation at iteration {result['iter']}"]
    prov = result.get("provenance", {})
    protocol = prov.get("protocol", {})
    if protocol:
        lines[0] += (f", protocol at scale {protocol['scale']:g}" +
                     (" (the published protocol)" if protocol["comparable_with_published"]
                      else ": NOT comparable with published numbers"))
        if protocol.get("note"):
            lines.append(f"Note: {protocol['note']}.")
        lines.append(_provenance_text(prov))
    lines.append("")
    if "scores" in result:
        lines += [metrics.format_table(result["scores"]), ""]
    else:
        lines += [f"Note: {result['note']}", ""]
    report = result["latents"]
    lines.append(f"Latents (active: {report['active_rule']}):")
    lines.append(f"{'latent':>6} {'KL':>8} {'post.var':>9} {'code var':>9} {'active':>6}  best factor (NMI)")
    for i in report["order"]:
        row = report["per_latent"][i]
        best = f"{row['best_factor']} ({row['nmi']:.2f})" if row["best_factor"] else "-"
        kl = f"{row['kl']:8.3f}" if row["kl"] is not None else f"{'-':>8}"
        posterior = f"{row['posterior_variance']:9.4f}" if row["posterior_variance"] is not None else f"{'-':>9}"
        lines.append(f"{row['name']:>6} {kl} {posterior} {row['code_variance']:9.4f} {str(row['active']):>6}  {best}")
    return "\n".join(lines) + "\n"


def _provenance_text(prov: dict) -> str:
    protocol, dataset = prov["protocol"], prov["dataset"]
    counts = protocol["sample_counts"]
    b, f, d = counts["beta_vae"], counts["factor_vae"], counts["dci"]
    checkpoint = prov["checkpoint"]
    fingerprint = dataset.get("fingerprint") or {}
    software = ", ".join(f"{k} {v}" for k, v in prov["software"].items() if v)
    return "\n".join([
        f"checkpoint: {checkpoint.get('path') or '(none: the model in memory)'} "
        f"at iteration {checkpoint.get('iteration')}",
        f"method: {prov.get('method') or '-'}, model {prov.get('model') or '-'}, encoder {prov['encoder']['class']} "
        f"(z_dim {prov['encoder']['z_dim']}, {'with' if prov['encoder']['has_logvar'] else 'no'} posterior variance)",
        f"precision: {prov['precision']['used']}" + (f" ({prov['precision']['reason']})"
                                                   if prov["precision"].get("reason") else ""),
        f"seed: {prov['seed']} (training); protocol seed {protocol['seed']} (--eval_seed: every score's draws, "
        "the latent report's and UDR's images)",
        f"dataset: {dataset.get('name') or '-'} at {dataset.get('path') or '-'}, {dataset['images']:,} images, "
        f"{dataset.get('origin') or 'origin unknown'}"
        + (f", sha256 {fingerprint['sha256']} of {fingerprint['of']}" if fingerprint else ""),
        f"protocol: BetaVAE {b['num_train']:,}/{b['num_eval']:,} points of {b['batch_size']} pairs; "
        f"FactorVAE {f['num_train']:,}/{f['num_eval']:,} votes of {f['batch_size']}, variance from "
        f"{f['num_variance_estimate']:,}; MIG {counts['mig']['num_train']:,} points, {counts['mig']['num_bins']} bins; "
        f"DCI {d['num_train']:,}/{d['num_test']:,} points, estimator {d['estimator']}; "
        f"SAP {counts['sap']['num_train']:,}/{counts['sap']['num_test']:,} points; "
        f"latent report {protocol['latent_report_images']:,} images; "
        f"{protocol['images_encoded']:,} images encoded",
        f"software: {software}",
    ])


def _plain(value):
    """numpy scalars and arrays, paths, dtypes -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
