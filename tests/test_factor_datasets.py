"""Shapes3D, MPI3D and Cars3D, read from small files written in each official format (the real ones are
gigabytes and cannot be downloaded here): the loaders' grid order, shape checks and messages, and one
command that trains and scores on each.  Each test shrinks the factor grid the loader expects."""

import json

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from conftest import run_args

from dataset import DATASETS, DataError, load_dataset
from loaders import cars3d, mpi3d, shapes3d, smallnorb
from loaders.factor_grid import row_major_strides
from main import build_parser, main


def grid_images(sizes, channels=3):
    """uint8 (N, 64, 64, C): image i is filled with the value i, so a picture tells which grid point it is."""
    n = int(np.prod(sizes))
    return np.broadcast_to((np.arange(n) % 251).astype(np.uint8)[:, None, None, None], (n, 64, 64, channels)).copy()


def write_shapes3d(path, sizes, images=None, labels=None):
    """3dshapes.h5 as DeepMind publishes it: `images` uint8 (N, 64, 64, 3), `labels` float64 (N, 6), row-major
    grid, gzip-compressed chunks."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        images = grid_images(sizes) if images is None else images
        f.create_dataset("images", data=images, compression="gzip", chunks=(1, *images.shape[1:]))
        f.create_dataset("labels", data=grid * 0.1 + 0.75 if labels is None else labels)  # float values


SMALL_SHAPES = (2, 1, 2, 2, 1, 3)
SMALL_MPI3D = (2, 1, 2, 1, 1, 3, 4)


@pytest.fixture
def small_grids(monkeypatch):
    monkeypatch.setattr(shapes3d, "FACTOR_SIZES", SMALL_SHAPES)
    monkeypatch.setattr(mpi3d, "FACTOR_SIZES", SMALL_MPI3D)
    monkeypatch.setattr(cars3d, "NUM_CARS", 2)


def test_every_dataset_of_the_table_is_a_dataset_choice():
    choices = next(a for a in build_parser()._actions if a.dest == "dataset").choices
    assert sorted(DATASETS) == choices
    for name in ("shapes3d", "mpi3d_toy", "mpi3d_realistic", "mpi3d_real", "cars3d"):
        assert name in choices


def test_shapes3d_reads_the_grid_in_row_major_order(tmp_path, small_grids):
    path = tmp_path / DATASETS["shapes3d"].relpath
    write_shapes3d(path, SMALL_SHAPES)
    data = load_dataset(DATASETS["shapes3d"], tmp_path)
    assert len(data) == 24 and data.nc == 3 and data.factor_sizes == SMALL_SHAPES and data.has_factors
    factors = np.array([[1, 0, 1, 0, 0, 2], [0, 0, 0, 1, 0, 1]])
    indices = data.indices_for_factors(factors)
    assert indices.tolist() == [1 * 12 + 1 * 6 + 2, 3 + 1]
    assert np.array_equal(data.factors_of(indices.numpy()), factors)
    images = data.get(indices)
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == indices.tolist()  # image i holds value i


def test_shapes3d_refuses_a_wrong_file_with_what_to_do(tmp_path, small_grids):
    spec = DATASETS["shapes3d"]
    with pytest.raises(DataError, match="no file at .*3dshapes.h5.*deepmind/3d-shapes"):
        load_dataset(spec, tmp_path)
    path = tmp_path / spec.relpath
    shuffled = np.stack(np.meshgrid(*[np.arange(s) for s in SMALL_SHAPES], indexing="ij"), -1).reshape(-1, 6)[::-1]
    write_shapes3d(path, SMALL_SHAPES, labels=shuffled.astype(float))
    with pytest.raises(DataError, match="not the full factor grid in row-major order"):
        load_dataset(spec, tmp_path)
    write_shapes3d(path, SMALL_SHAPES, images=np.zeros((24, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 \(24, 64, 64, 3\)"):
        load_dataset(spec, tmp_path)
    path.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        load_dataset(spec, tmp_path)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_mpi3d_is_memory_mapped_when_stored_and_read_when_compressed(tmp_path, small_grids, save):
    path = tmp_path / DATASETS["mpi3d_toy"].relpath
    path.parent.mkdir(parents=True)
    save(path, images=grid_images(SMALL_MPI3D))
    data = load_dataset(DATASETS["mpi3d_toy"], tmp_path)
    assert isinstance(data.images, np.memmap) == (save is np.savez)
    assert data.factor_names == mpi3d.FACTOR_NAMES and len(data) == 48
    every = torch.arange(48)
    assert data.get(every)[:, 2, 10, 10].tolist() == list(range(48))
    assert np.array_equal(data.factors_of(np.arange(48)) @ row_major_strides(SMALL_MPI3D), np.arange(48))


def test_mpi3d_refuses_a_wrong_file_with_what_to_do(tmp_path, small_grids):
    spec = DATASETS["mpi3d_real"]
    with pytest.raises(DataError, match="mpi3d_real: no file at .*rr-learning"):
        load_dataset(spec, tmp_path)
    path = tmp_path / spec.relpath
    path.parent.mkdir(parents=True)
    np.savez(path, pictures=grid_images(SMALL_MPI3D))
    with pytest.raises(DataError, match="has no 'images' array"):
        load_dataset(spec, tmp_path)
    np.savez(path, images=grid_images(SMALL_MPI3D)[:40])
    with pytest.raises(DataError, match=r"expected uint8 \(48, 64, 64, C\)"):
        load_dataset(spec, tmp_path)


def write_car(path, car):
    """One car .mat as in the analogy data: `im` uint8 (128, 128, 3, 24 azimuths, 4 elevations); view (a, e) of
    car c is filled with the value 100 c + 4 a + e (so shrinking it keeps the value)."""
    values = (100 * car + 4 * np.arange(24)[:, None] + np.arange(4)[None, :]).astype(np.uint8)  # (24, 4)
    scipy.io.savemat(path, {"im": np.broadcast_to(values, (128, 128, 3, 24, 4)).copy()})


def test_cars3d_puts_elevation_azimuth_and_car_in_row_major_order(tmp_path, small_grids):
    folder = tmp_path / "cars"
    folder.mkdir()
    for car in range(2):
        write_car(folder / f"car_{car + 1:03d}_mesh.mat", car)
    data = load_dataset(DATASETS["cars3d"], tmp_path)
    assert data.factor_sizes == (4, 24, 2) and len(data) == 192
    factors = np.array([[3, 5, 1], [0, 23, 0]])
    images = data.get(data.indices_for_factors(factors))
    assert images.shape == (2, 3, 64, 64)
    assert images[:, 0, 32, 32].tolist() == [100 + 4 * 5 + 3, 4 * 23]
    (folder / "car_001_mesh.mat").unlink()
    with pytest.raises(DataError, match="found 1 .mat files .* expected 2"):
        load_dataset(DATASETS["cars3d"], tmp_path)
    scipy.io.savemat(folder / "car_000_mesh.mat", {"im": np.zeros((64, 64, 3, 24, 4), np.uint8)})
    with pytest.raises(DataError, match=r"car_000_mesh.mat: 'im' is uint8 \(64, 64, 3, 24, 4\)"):
        load_dataset(DATASETS["cars3d"], tmp_path)


def test_an_official_file_is_fingerprinted_without_dsprites_questions(tmp_path, small_grids):
    from evaluation.evaluate import _dataset_identity

    path = tmp_path / DATASETS["mpi3d_toy"].relpath
    path.parent.mkdir(parents=True)
    np.savez(path, images=grid_images(SMALL_MPI3D))
    identity = _dataset_identity(path, load_dataset(DATASETS["mpi3d_toy"], tmp_path))
    assert identity["origin"].startswith("the file as given") and len(identity["fingerprint"]["sha256"]) == 64


def test_a_colour_dataset_refuses_one_channel(tmp_path):
    from dataset import dataset_spec

    args = build_parser().parse_args(["--dataset", "shapes3d", "--channels", "1", "--dset_dir", str(tmp_path)])
    with pytest.raises(DataError, match="shapes3d images have 3 channels"):
        dataset_spec(args)


@pytest.mark.parametrize("name", ["mpi3d_toy", "smallnorb"])
def test_one_command_trains_and_scores(tmp_path, small_grids, monkeypatch, name):
    """main.py --dataset <name>: training, then every score and the latent report with the dataset's factors."""
    if name == "smallnorb":
        monkeypatch.setattr(smallnorb, "FACTOR_SIZES", (2, 1, 3, 2))
        monkeypatch.setattr(smallnorb, "INSTANCES", 4)
        write_smallnorb(tmp_path / "data" / "small_norb", (2, 1, 3, 2), 4)
        names = smallnorb.FACTOR_NAMES
    else:
        path = tmp_path / "data" / DATASETS["mpi3d_toy"].relpath
        path.parent.mkdir(parents=True)
        np.savez(path, images=np.random.RandomState(0).randint(0, 255, (48, 64, 64, 3)).astype(np.uint8))
        names = mpi3d.FACTOR_NAMES
    argv = run_args(tmp_path, tmp_path / "data", "--dataset", name, "--viz_name", "m", "--max_iter", "2",
                    "--z_dim", "4", "--eval_metrics", "True", "--eval_scale", "0.002", "--dci_estimator", "hist",
                    "--save_output", "False")
    assert main(argv) == 0
    result = json.loads((tmp_path / "outputs" / "m" / "eval_2_scale0.002.json").read_text())
    assert {"irs", "modularity", "mig", "beta_vae"} <= set(result["summary"])
    assert result["provenance"]["protocol"]["seed"] == 0  # --eval_seed's default, not --seed's
    assert {row["best_factor"] for row in result["latents"]["per_latent"]} <= set(names) | {None}
    assert result["matrices"]["mutual_information"]["columns"] == list(names)


def test_mpi3d_of_the_first_toy_release_gets_its_sizes(tmp_path, small_grids, monkeypatch):
    """disentanglement_lib's mpi3d.py describes the first toy file (4 colours, 4 shapes): its size tells it."""
    monkeypatch.setattr(mpi3d, "FIRST_TOY_SIZES", (1, 2, 1, 1, 1, 1, 3))
    path = tmp_path / DATASETS["mpi3d_toy"].relpath
    path.parent.mkdir(parents=True)
    np.savez(path, images=grid_images((6,)))
    assert load_dataset(DATASETS["mpi3d_toy"], tmp_path).factor_sizes == (1, 2, 1, 1, 1, 1, 3)


# ----------------------------------------------------------------------------- SmallNORB


def write_norb(path, array):
    """NORB's binary matrix: int32 magic (element type), ndim, max(3, ndim) int32 sizes (1 for the unused),
    then the data, little-endian."""
    magic = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}[array.dtype]
    dims = list(array.shape) + [1] * (3 - array.ndim)
    path.write_bytes(np.array([magic, array.ndim, *dims], "<i4").tobytes() + array.astype(array.dtype.newbyteorder("<"))
                     .tobytes())


def write_smallnorb(folder, sizes, instances):
    """Both chunks, as the official files split the instances (here the first half trains, the rest tests).
    The left image of (category c, elevation e, azimuth a, lighting l, instance i) is filled with its grid index
    (in the loader's order); the right image with 255."""
    folder.mkdir(parents=True, exist_ok=True)
    combos = np.stack(np.meshgrid(*[np.arange(s) for s in (*sizes, instances)], indexing="ij"), -1).reshape(-1, 5)
    index = combos @ row_major_strides((*sizes, instances))
    for chunk, keep in zip(smallnorb.CHUNKS, (combos[:, 4] < instances // 2, combos[:, 4] >= instances // 2),
                           strict=True):
        rows, values = combos[keep], index[keep].astype(np.uint8)
        dat = np.full((len(rows), 2, 96, 96), 255, np.uint8)
        dat[:, 0] = values[:, None, None]
        write_norb(folder / f"smallnorb-{chunk}-dat.mat", dat)
        write_norb(folder / f"smallnorb-{chunk}-cat.mat", rows[:, 0].astype(np.int32))
        # info: instance, elevation, azimuth in steps of 2, lighting
        info = np.stack([rows[:, 4], rows[:, 1], 2 * rows[:, 2], rows[:, 3]], axis=1).astype(np.int32)
        write_norb(folder / f"smallnorb-{chunk}-info.mat", info)


@pytest.fixture
def small_norb(tmp_path, monkeypatch):
    monkeypatch.setattr(smallnorb, "FACTOR_SIZES", (2, 1, 3, 2))
    monkeypatch.setattr(smallnorb, "INSTANCES", 4)
    write_smallnorb(tmp_path / "small_norb", (2, 1, 3, 2), 4)
    return tmp_path


def test_smallnorb_reads_both_chunks_into_the_grid_and_draws_the_instance(small_norb):
    data = load_dataset(DATASETS["smallnorb"], small_norb)
    assert len(data) == 48 and data.nc == 1 and data.factor_sizes == (2, 1, 3, 2)
    assert data.get(torch.arange(48))[:, 0, 32, 32].tolist() == list(range(48))  # the left image, in place
    rng = np.random.RandomState(0)
    factors = data.sample_factors(5, rng)
    rows = data.observe(factors, rng)
    again = np.random.RandomState(0)
    again.randint(2, size=5), again.randint(1, size=5), again.randint(3, size=5), again.randint(2, size=5)
    assert rows.shape == (5, 5) and np.array_equal(rows[:, 4], again.randint(4, size=5))  # drawn after the factors
    assert np.array_equal(data.factors_of(data.indices_for_factors(rows).numpy()), factors)
    with pytest.raises(ValueError, match="instance"):
        data.indices_for_factors(factors)


def test_the_scores_draw_smallnorb_instances_in_the_library_order(small_norb):
    from evaluation import metrics

    data = load_dataset(DATASETS["smallnorb"], small_norb)
    rng = np.random.RandomState(1)
    expected = []
    for size in (16, 16, 8):  # per batch: the factors, then the instance (sample_observations_from_factors)
        factors = data.sample_factors(size, rng)
        expected.append(np.column_stack([factors, rng.randint(4, size=size)]))
    assert np.array_equal(metrics.batched_factors(data, np.random.RandomState(1), 40), np.concatenate(expected))
    result = metrics.mig(data, lambda images: images.float().mean((1, 2, 3))[:, None].numpy(),
                         np.random.RandomState(0), num_train=200)
    assert set(result["per_factor"]) == set(smallnorb.FACTOR_NAMES)


def test_smallnorb_refuses_missing_or_damaged_files(small_norb):
    spec = DATASETS["smallnorb"]
    dat = small_norb / "small_norb" / f"smallnorb-{smallnorb.CHUNKS[1]}-dat.mat"
    dat.write_bytes(dat.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(spec, small_norb)
    dat.unlink()
    with pytest.raises(DataError, match=r"testing-dat.mat not found .*norb-v1.0-small"):
        load_dataset(spec, small_norb)
