"""The loaders, on small data made here."""

import numpy as np
import pytest
import torch
from conftest import write_dsprites_npz
from PIL import Image

import dataset
from dataset import DATASETS, DSPRITES_FILE, BatchOrder, DataError, ImageFolder, load_dataset, load_dsprites


def test_dsprites_round_trips_through_the_packed_form(tmp_path):
    path = tmp_path / "d.npz"
    imgs = write_dsprites_npz(path, n=300)
    data = load_dsprites(path, chunk=64)  # several chunks, the last one partial
    assert len(data) == 300 and data.packed.dtype == torch.uint8 and data.packed.shape == (300, 64, 8)
    batch = data.get(torch.tensor([0, 299, 17]))
    assert batch.shape == (3, 1, 64, 64)
    assert np.array_equal(batch[:, 0].numpy(), imgs[[0, 299, 17]])


def test_a_second_load_reads_the_packed_copy_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    imgs = write_dsprites_npz(path, n=100)
    first = load_dsprites(path)
    cache = dataset.packed_cache_path(path)
    assert cache.is_file() and not list(tmp_path.glob(".*.tmp"))  # written whole, no temporary left

    def no_npz(*args):
        raise AssertionError("the npz was read although its packed copy is current")

    with monkeypatch.context() as patch:
        patch.setattr(dataset, "_read_dsprites_npz", no_npz)
        again = load_dsprites(path)
    assert torch.equal(again.packed, first.packed) and np.array_equal(again.latents_classes, first.latents_classes)
    assert again.latents_classes.dtype == np.int64

    other = write_dsprites_npz(path, n=100, seed=1)  # another file at the same path: the copy is stale
    changed = load_dsprites(path)
    assert np.array_equal(changed.get(torch.arange(100))[:, 0].numpy(), other)
    assert not np.array_equal(other, imgs)
    with monkeypatch.context() as patch:  # and the copy now follows the new file
        patch.setattr(dataset, "_read_dsprites_npz", no_npz)
        assert torch.equal(load_dsprites(path).packed, changed.packed)


def test_a_damaged_packed_copy_is_said_and_replaced(tmp_path, capsys):
    path = tmp_path / "d.npz"
    imgs = write_dsprites_npz(path, n=50)
    load_dsprites(path)
    cache = dataset.packed_cache_path(path)
    cache.write_bytes(cache.read_bytes()[:1000])  # cut short, as a full disk might have left a plain write
    data = load_dsprites(path)
    assert np.array_equal(data.get(torch.arange(50))[:, 0].numpy(), imgs)
    assert f"{cache}: unreadable" in capsys.readouterr().err
    assert torch.equal(load_dsprites(path).packed, data.packed) and capsys.readouterr().err == ""  # rewritten


def test_a_folder_that_cannot_take_the_packed_copy_still_loads_and_says_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.npz"
    imgs = write_dsprites_npz(path, n=50)

    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset, "atomic_write", full_disk)
    data = load_dsprites(path)
    assert np.array_equal(data.get(torch.arange(50))[:, 0].numpy(), imgs)
    err = capsys.readouterr().err
    assert "could not keep the packed copy" in err and "No space left on device" in err
    assert not dataset.packed_cache_path(path).exists()


def test_small_dsprites_has_no_factor_interface(tmp_path):
    write_dsprites_npz(tmp_path / "d.npz", n=64)
    assert not load_dsprites(tmp_path / "d.npz").has_factors


def test_batch_order_is_a_function_of_seed_and_step():
    a, b = BatchOrder(1000, 64, seed=3), BatchOrder(1000, 64, seed=3)
    steps = [1, 2, 15, 16, 17, 40]
    first = [a.indices(s).tolist() for s in steps]
    assert first == [b.indices(s).tolist() for s in reversed(steps)][::-1]
    epoch = torch.cat([a.indices(s) for s in range(1, 16)])  # 15 full batches per epoch, drop-last
    assert len(set(epoch.tolist())) == 15 * 64
    assert not torch.equal(a.indices(1), a.indices(16))  # a new epoch reshuffles
    assert not torch.equal(a.indices(1), BatchOrder(1000, 64, seed=4).indices(1))


def test_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="--batch_size"):
        BatchOrder(10, 64, seed=0)


def make_images(folder):
    (folder / "img_align_celeba").mkdir(parents=True)
    Image.new("RGB", (178, 218), (255, 0, 0)).save(folder / "img_align_celeba" / "000001.jpg")
    Image.new("L", (30, 50), 128).save(folder / "gray.png")
    Image.new("RGBA", (64, 64), (0, 0, 255, 128)).save(folder / "rgba.png")
    Image.new("P", (10, 10)).save(folder / "palette.gif")


def test_image_folder_finds_nested_and_flat_images_and_converts_them(tmp_path):
    make_images(tmp_path / "CelebA")
    data = load_dataset(DATASETS["celeba"], tmp_path)
    assert len(data) == 4
    for i in range(len(data)):
        image = data[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    jpg = next(i for i, p in enumerate(data.files) if p.name == "000001.jpg")
    red = data.get(torch.tensor([jpg]))[0]
    assert red[0].float().mean() > 240 and red[2].float().mean() < 15


def test_non_images_are_skipped_with_one_warning(tmp_path):
    make_images(tmp_path / "CelebA")
    (tmp_path / "CelebA" / "notes.txt").write_text("not an image")
    (tmp_path / "CelebA" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        data = ImageFolder(tmp_path / "CelebA")
    assert len(data) == 4


def test_missing_folder_names_the_path_and_the_source(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(DATASETS["3dchairs"], tmp_path)
    assert str(tmp_path / "3DChairs") in str(err.value) and "seeing3Dchairs" in str(err.value)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "CelebA").mkdir()
    with pytest.raises(DataError, match="no readable images"):
        load_dataset(DATASETS["celeba"], tmp_path)


def test_dsprites_path_follows_the_reference_layout(tmp_path):
    assert DATASETS["dsprites"].path(tmp_path) == tmp_path / DSPRITES_FILE
    assert DSPRITES_FILE.endswith("dsprites-dataset/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
