import numpy as np
import pytest
import torch
from dmlt_trainer.config import DataConfig
from dmlt_trainer.data import batch_bounds, make_synthetic, prepare, shard_indices
from dmlt_trainer.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n, world", [(100, 1), (100, 2), (101, 4), (7, 3)])
def test_shards_are_disjoint_and_cover_everything(n, world):
    shards = [shard_indices(n, r, world, epoch=0, seed=1) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank takes the same number of steps"
    allidx = torch.cat(shards)
    assert set(allidx.tolist()) == set(range(n))
    padding = len(allidx) - n
    assert padding < world
    if padding == 0:
        assert len(set(allidx.tolist())) == n


def test_shuffle_changes_per_epoch_and_is_seeded():
    a0 = shard_indices(1000, 0, 2, epoch=0, seed=3)
    a1 = shard_indices(1000, 0, 2, epoch=1, seed=3)
    assert not torch.equal(a0, a1)
    assert torch.equal(a0, shard_indices(1000, 0, 2, epoch=0, seed=3))


def test_strided_shards_make_the_same_global_batches_as_one_rank():
    one = shard_indices(64, 0, 1, epoch=0, seed=5)
    two = [shard_indices(64, r, 2, epoch=0, seed=5) for r in range(2)]
    global_batch = set(one[:16].tolist())
    assert set(two[0][:8].tolist()) | set(two[1][:8].tolist()) == global_batch


def test_batch_bounds_drop_a_trailing_single_row():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 8)]


def test_synthetic_is_deterministic_and_balanced():
    x1, y1 = make_synthetic(2000, 20, seed=1)
    x2, y2 = make_synthetic(2000, 20, seed=1)
    assert x1.dtype == np.float32 and x1.shape == (2000, 20)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert 0.4 < y1.mean() < 0.6
    x3, _ = make_synthetic(2000, 20, seed=2)
    assert not np.array_equal(x1, x3)


def test_prepare_splits_stratified_scales_on_train_and_caches(tmp_path):
    cfg = DataConfig(dataset="synthetic", n_samples=4000, cache_dir=str(tmp_path))
    data = prepare(cfg, seed=0)
    n = len(data.y_train) + len(data.y_val) + len(data.y_test)
    assert n == 4000 and abs(len(data.y_val) - 600) <= 1
    assert abs(data.y_val.mean() - data.y_train.mean()) < 0.02
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(data.x_train.std(axis=0), 1, atol=1e-3)
    assert not np.allclose(data.x_val.mean(axis=0), 0, atol=1e-4), "val must not be scaled on itself"
    assert len(list(tmp_path.rglob("*.parquet"))) == 3
    again = prepare(cfg, seed=0)
    assert np.array_equal(again.x_test, data.x_test)


def test_breast_cancer_ships_with_sklearn(tmp_path):
    data = prepare(DataConfig(dataset="breast_cancer", cache_dir=str(tmp_path)), seed=0)
    assert data.n_features == 30
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 569


def test_covertype_missing_names_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DMLT_COVERTYPE_PATH", raising=False)
    cfg = DataConfig(dataset="covertype", data_path=str(tmp_path / "cov.parquet"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"covertype data not found at .*cov\.parquet"):
        prepare(cfg, seed=0)


def test_covertype_reads_a_local_file_as_lodgepole_vs_rest(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 54)), columns=[f"c{i}" for i in range(54)])
    frame["Cover_Type"] = rng.integers(1, 8, size=300)
    path = tmp_path / "covtype.csv"
    frame.to_csv(path, index=False)
    data = prepare(DataConfig(dataset="covertype", data_path=str(path), cache_dir=str(tmp_path)), seed=0)
    assert data.n_features == 54
    labels = np.concatenate([data.y_train, data.y_val, data.y_test])
    assert labels.sum() == (frame["Cover_Type"] == 2).sum()


def test_user_file_with_target_column(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(200.0), "b": ["x", "y"] * 100, "label": ["no", "yes"] * 100})
    path = tmp_path / "mine.parquet"
    frame.to_parquet(path)
    data = prepare(
        DataConfig(dataset="file", data_path=str(path), target="label", cache_dir=str(tmp_path)), 0
    )
    assert data.n_features == 3  # a + one-hot(b)
    bad = DataConfig(dataset="file", data_path=str(path), target="nope", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="target column 'nope' not found"):
        prepare(bad, 0)


def test_cgroup_cpu_limit_v2_and_v1(tmp_path):
    from dmlt_trainer.dist import cgroup_cpu_limit

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "v1") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1") is None
