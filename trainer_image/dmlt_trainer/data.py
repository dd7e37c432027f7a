"""Datasets: generate or read, split (stratified), scale on train only, cache as parquet.

Also the data path of training: a per-epoch permutation with DistributedSampler
semantics, batches taken by slicing in-memory tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmlt_trainer.config import DataConfig
from dmlt_trainer.errors import ConfigError

CACHE_VERSION = 3
COVERTYPE_ENV = "DMLT_COVERTYPE_PATH"
COVERTYPE_DEFAULT = "data/covertype.parquet"
COVERTYPE_POSITIVE_CLASS = 2  # Lodgepole Pine vs the other six cover types: ~49% positive
SYNTHETIC_SHAPES = {"synthetic": (100_000, 50), "synthetic_large": (500_000, 100)}


@dataclass(slots=True)
class PreparedData:
    """Split, scaled float32 arrays; labels are 0/1 float32."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def positive_rate(self) -> float:
        return float(self.y_train.mean())


def make_synthetic(n_samples: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic binary task with informative, redundant and noise features.

    Generated in float32 chunks so a 500K x 100 set stays well under the memory budget.
    """
    rng = np.random.default_rng(seed)
    n_informative = max(2, int(n_features * 0.4))
    n_redundant = int(n_features * 0.2)
    n_noise = n_features - n_informative - n_redundant
    weights = rng.normal(size=n_informative).astype(np.float32)
    pair_weights = rng.normal(size=n_informative // 2).astype(np.float32) * 0.6
    mixing = rng.normal(size=(n_informative, n_redundant)).astype(np.float32) / math.sqrt(n_informative)
    # Columns are shuffled so feature kinds are interleaved; done per chunk to avoid a full copy.
    perm = rng.permutation(n_features)
    x = np.empty((n_samples, n_features), dtype=np.float32)
    logits = np.empty(n_samples, dtype=np.float32)
    chunk = 50_000
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        size = stop - start
        informative = rng.standard_normal((size, n_informative), dtype=np.float32)
        half = n_informative // 2
        interactions = informative[:, :half] * informative[:, half : 2 * half]
        logits[start:stop] = (
            informative @ weights / math.sqrt(n_informative) * 2.5 + np.tanh(interactions) @ pair_weights
        )
        block = np.empty((size, n_features), dtype=np.float32)
        block[:, :n_informative] = informative
        block[:, n_informative : n_informative + n_redundant] = informative @ mixing
        block[:, n_informative + n_redundant :] = rng.standard_normal((size, n_noise), dtype=np.float32)
        x[start:stop] = block[:, perm]
    threshold = np.median(logits)
    noise = rng.logistic(size=n_samples).astype(np.float32) * 0.35
    y = (logits + noise > threshold).astype(np.float32)
    return x, y


def _read_table(path: Path):
    import pandas as pd

    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".gz", ".txt"):
        return pd.read_csv(path)
    raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .csv")


def _frame_to_xy(frame, target: str, source: str, positive=None) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    if target not in frame.columns:
        raise ConfigError(
            f"{source}: target column {target!r} not found; "
            f"columns: {', '.join(map(str, frame.columns[:12]))}…"
        )
    labels = frame[target]
    features = frame.drop(columns=[target])
    if positive is not None:
        y = (labels == positive).to_numpy(dtype=np.float32)
    else:
        classes = sorted(labels.dropna().unique().tolist())
        if len(classes) != 2:
            raise ConfigError(
                f"{source}: target {target!r} must have exactly 2 classes; found {len(classes)}"
            )
        y = (labels == classes[1]).to_numpy(dtype=np.float32)
    if labels.isna().any():
        raise ConfigError(f"{source}: target {target!r} has missing values")
    categorical = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if categorical:
        features = pd.get_dummies(features, columns=categorical, dtype=np.float32)
    x = features.to_numpy(dtype=np.float32, na_value=np.nan)
    if np.isnan(x).any():
        col_means = np.nanmean(x, axis=0)
        rows, cols = np.where(np.isnan(x))
        x[rows, cols] = col_means[cols]
    return x, y


def covertype_path(cfg: DataConfig) -> Path:
    return Path(cfg.data_path or os.environ.get(COVERTYPE_ENV) or COVERTYPE_DEFAULT)


def load_raw(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The full dataset as (features float32, labels 0/1 float32)."""
    if cfg.dataset in SYNTHETIC_SHAPES:
        n, d = SYNTHETIC_SHAPES[cfg.dataset]
        return make_synthetic(cfg.n_samples or n, d, seed)
    if cfg.dataset == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        return bunch.data.astype(np.float32), bunch.target.astype(np.float32)
    if cfg.dataset == "covertype":
        path = covertype_path(cfg)
        if not path.is_file():
            raise ConfigError(
                f"covertype data not found at {path}: save the UCI Covertype table (581,012 rows, "
                f"54 features, column Cover_Type) there as parquet or CSV, or point --data-path "
                f"or {COVERTYPE_ENV} at it"
            )
        frame = _read_table(path)
        target = cfg.target or "Cover_Type"
        return _frame_to_xy(frame, target, str(path), positive=COVERTYPE_POSITIVE_CLASS)
    path = Path(cfg.data_path or "")
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    return _frame_to_xy(_read_table(path), cfg.target or "", str(path))


def _cache_key(cfg: DataConfig, seed: int) -> str:
    parts: dict[str, object] = {
        "v": CACHE_VERSION,
        "dataset": cfg.dataset,
        "n": cfg.n_samples,
        "seed": seed,
        "val": cfg.val_fraction,
        "test": cfg.test_fraction,
        "target": cfg.target,
    }
    if cfg.dataset in ("covertype", "file"):
        path = covertype_path(cfg) if cfg.dataset == "covertype" else Path(cfg.data_path or "")
        if path.is_file():
            stat = path.stat()
            parts["file"] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.dataset}-{digest}"


def column_stats(x: np.ndarray, rows: np.ndarray, chunk: int = 32_768) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of x[rows] per column, in float64, a chunk of rows at a time
    (a full float64 copy of a 500K x 100 split would cost 400 MB)."""
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    for start in range(0, len(rows), chunk):
        block = x[rows[start : start + chunk]].astype(np.float64)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    n = max(len(rows), 1)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def split_and_scale(x: np.ndarray, y: np.ndarray, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Stratified train/val/test split; standardisation fitted on train only."""
    from sklearn.model_selection import train_test_split

    holdout = cfg.val_fraction + cfg.test_fraction
    idx = np.arange(len(y))
    train_idx, rest_idx = train_test_split(idx, test_size=holdout, stratify=y, random_state=seed)
    val_idx, test_idx = train_test_split(
        rest_idx,
        test_size=cfg.test_fraction / holdout,
        stratify=y[rest_idx],
        random_state=seed,
    )
    mean, std = column_stats(x, train_idx)
    out: dict[str, np.ndarray] = {}
    for split, rows in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        part = x[rows]
        part -= mean
        part /= std
        out[f"x_{split}"] = part
        out[f"y_{split}"] = y[rows]
    return out


def _write_parquet(path: Path, x: np.ndarray, y: np.ndarray, rows_per_group: int = 65_536) -> None:
    """Write in row groups, so no full-size columnar copy of x is ever held."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"f{i}" for i in range(x.shape[1])] + ["label"]
    schema = pa.schema([(n, pa.float32()) for n in names])
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, len(y), rows_per_group):
            block = np.ascontiguousarray(x[start : start + rows_per_group].T)
            arrays = [pa.array(col) for col in block] + [pa.array(y[start : start + rows_per_group])]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    os.replace(tmp, path)  # atomic: concurrent ranks never read a half-written file


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    feature_names = [n for n in table.column_names if n != "label"]
    x = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for i, name in enumerate(feature_names):
        x[:, i] = table.column(name).to_numpy()
    y = table.column("label").to_numpy().astype(np.float32)
    return x, y


def prepare(cfg: DataConfig, seed: int) -> PreparedData:
    """Load the prepared splits from the parquet cache, building them on a miss."""
    cache = Path(cfg.cache_dir) / _cache_key(cfg, seed)
    splits = ("train", "val", "test")
    arrays: dict[str, np.ndarray] = {}
    if all((cache / f"{s}.parquet").is_file() for s in splits):
        for s in splits:
            arrays[f"x_{s}"], arrays[f"y_{s}"] = _read_parquet(cache / f"{s}.parquet")
    else:
        x, y = load_raw(cfg, seed)
        if len(y) < 20 or y.min() == y.max():
            raise ConfigError(f"dataset {cfg.dataset!r} needs at least 20 rows of both classes")
        arrays = split_and_scale(x, y, cfg, seed)
        del x, y
        cache.mkdir(parents=True, exist_ok=True)
        for s in splits:
            _write_parquet(cache / f"{s}.parquet", arrays[f"x_{s}"], arrays[f"y_{s}"])
    return PreparedData(name=cfg.dataset, **arrays)


def shard_indices(
    n: int, rank: int, world_size: int, epoch: int, seed: int, shuffle: bool = True
) -> torch.Tensor:
    """This rank's indices for one epoch, as torch's DistributedSampler would give them.

    The permutation depends on (seed, epoch); it is padded by wrapping so every rank
    gets the same count (ranks must take the same number of steps), then strided.
    """
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    per_rank = math.ceil(n / world_size)
    total = per_rank * world_size
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order[rank:total:world_size]


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch; a trailing single row is dropped (BatchNorm needs 2)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if bounds and bounds[-1][1] - bounds[-1][0] < 2:
        bounds.pop()
    return bounds
