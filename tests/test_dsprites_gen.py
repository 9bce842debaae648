"""The procedural dSprites generator: fidelity to real frames, factor conventions, file layout."""

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from loaders import dsprites_gen as gen

REFERENCE = Path(__file__).resolve().parents[2] / "shared/data/dsprites_reference/gif_frames.npz"


def classes_of(indices) -> np.ndarray:
    """Global indices -> (n, 6) factor classes in the real file's row-major order."""
    return np.stack(np.unravel_index(np.asarray(indices), gen.FACTOR_SIZES), axis=1).astype(np.int64)


def one(shape: int, scale: int, orientation: int, pos_x: int = 0, pos_y: int = 0) -> np.ndarray:
    """A single (64, 64) image."""
    return gen.render(np.array([[0, shape, scale, orientation, pos_x, pos_y]]))[0]


def test_matches_real_frames():
    if not REFERENCE.exists():
        pytest.skip(f"real dSprites reference frames not found at {REFERENCE}")
    ref = np.load(REFERENCE)
    real = ref["imgs"].astype(bool)
    ours = gen.render(ref["latents_classes"]).astype(bool)
    iou = (ours & real).sum(axis=(1, 2)) / (ours | real).sum(axis=(1, 2))
    assert iou.mean() >= 0.99, f"mean IoU {iou.mean():.4f}, worst {iou.min():.4f}"
    for shape in range(3):  # no shape may hide behind the others
        assert iou[ref["latents_classes"][:, 1] == shape].mean() >= 0.98


def test_latent_values_follow_the_real_file():
    values = gen.latent_values_for(classes_of(np.arange(gen.N_IMAGES)))
    assert values.dtype == np.float64 and values.shape == (gen.N_IMAGES, 6)
    expected = [[1.0], [1.0, 2.0, 3.0], np.linspace(0.5, 1, 6), np.linspace(0, 2 * np.pi, 40),
                np.linspace(0, 1, 32), np.linspace(0, 1, 32)]
    for column, possible in enumerate(expected):
        np.testing.assert_array_equal(np.unique(values[:, column]), possible)
    np.testing.assert_array_equal(gen.latent_values_for(np.array([[0, 2, 5, 39, 31, 0]])),
                                  [[1.0, 3.0, 1.0, 2 * np.pi, 1.0, 0.0]])


def test_bad_classes_are_refused():
    with pytest.raises(ValueError):
        gen.render(np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError):
        gen.render(np.array([[0, 3, 0, 0, 0, 0]]))  # only 3 shapes
    with pytest.raises(ValueError):
        gen.latent_values_for(np.array([[0, 0, 0, 0, 0, -1]]))


def test_index_order_is_row_major_with_pos_y_fastest():
    every = gen._latents_classes(gen._all_combos())
    np.testing.assert_array_equal(every, classes_of(np.arange(gen.N_IMAGES)))
    # Within a block the generator lays images out as its classes say.
    for index in (0, 1, 32, 1023, 1024 * 7 + 5 * 32 + 9, 1024 * 500 + 31 * 32 + 17, gen.N_IMAGES - 1):
        _, shape, scale, orientation, pos_x, pos_y = classes_of([index])[0]
        block = gen._render_combo(shape, scale, orientation)
        np.testing.assert_array_equal(block[pos_x * 32 + pos_y], gen.render(classes_of([index]))[0])


def test_geometry_conventions():
    square = one(0, 5, 0)  # scale 1, axis-aligned, anchor (16, 16): pixels 6..25 both ways
    expected = np.zeros((64, 64), np.uint8)
    expected[6:26, 6:26] = 1
    np.testing.assert_array_equal(square, expected)

    ellipse = one(1, 5, 0)
    rows, cols = np.nonzero(ellipse)
    assert np.ptp(cols) > np.ptp(rows)  # wide along x before rotation

    heart = one(2, 5, 0)
    rows = np.nonzero(heart.any(axis=1))[0]
    assert heart[rows[-1]].sum() < heart[rows[0] + 2].sum()  # tip at the bottom, lobes on top

    # Counter-clockwise on screen: a quarter turn takes the downward tip to the right.
    quarter = one(2, 5, 10, 16, 16)  # 10/39 of a turn, about 92°
    cols = np.nonzero(quarter.any(axis=0))[0]
    assert quarter[:, cols[-1]].sum() < quarter[:, cols[0] + 2].sum()


def test_orientation_zero_and_two_pi_coincide():
    classes = classes_of(np.arange(0, gen.N_IMAGES, 997))
    classes[:, 3] = 0
    at_zero = gen.render(classes)
    classes[:, 3] = 39
    np.testing.assert_array_equal(gen.render(classes), at_zero)


def test_sprites_stay_inside_the_frame():
    for shape in range(3):
        block = gen._render_combo(shape, 5, 5)  # largest scale, corners reach furthest
        edges = block[:, [0, -1], :].sum() + block[:, :, [0, -1]].sum()
        assert edges == 0 and block.sum(axis=(1, 2)).min() > 0


def test_small_generation_round_trip(tmp_path):
    combos = [(0, 5, 0), (2, 3, 17)]
    path = tmp_path / "nested" / "small.npz"
    gen.generate_dsprites(path, progress=False, _combos=combos)

    assert [p.name for p in path.parent.iterdir()] == ["small.npz"]  # no temporary file left
    with zipfile.ZipFile(path) as archive:
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    with np.load(path, allow_pickle=True) as data:
        assert set(data.files) == {"imgs", "latents_values", "latents_classes", "metadata"}
        imgs, classes, values = data["imgs"], data["latents_classes"], data["latents_values"]
        metadata = data["metadata"][()]
    assert imgs.dtype == np.uint8 and imgs.shape == (2048, 64, 64)
    assert classes.dtype == np.int64 and classes.shape == (2048, 6)
    assert values.dtype == np.float64 and values.shape == (2048, 6)
    np.testing.assert_array_equal(classes[:1024, 1:4], np.broadcast_to([0, 5, 0], (1024, 3)))
    np.testing.assert_array_equal(classes[:1024, 4:], classes_of(np.arange(1024))[:, 4:])
    np.testing.assert_array_equal(values, gen.latent_values_for(classes))
    np.testing.assert_array_equal(imgs, gen.render(classes))
    assert metadata["latents_names"] == gen.FACTOR_NAMES
    assert metadata[gen.GENERATOR_KEY] == "dsprites_gen.py"  # one extra entry marks a generated file
    assert {"title", "description", "version", "latents_sizes", "latents_possible_values"} <= set(metadata)
    np.testing.assert_array_equal(metadata["latents_sizes"], gen.FACTOR_SIZES)
    np.testing.assert_array_equal(metadata["latents_possible_values"]["orientation"], np.linspace(0, 2 * np.pi, 40))


def test_interrupted_generation_leaves_the_target_alone(tmp_path, monkeypatch):
    path = tmp_path / "dsprites.npz"
    path.write_bytes(b"previous file")
    calls = []

    def failing_render(*combo):
        calls.append(combo)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return np.zeros((1024, 64, 64), np.uint8)

    monkeypatch.setattr(gen, "_render_combo", failing_render)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_dsprites(path, progress=False, _combos=[(0, 0, o) for o in range(6)])
    assert path.read_bytes() == b"previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["dsprites.npz"]


def test_command_line_paths(tmp_path, monkeypatch, capsys):
    written = []

    def fake_generate(path, progress=True):
        written.append(Path(path))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"x")

    monkeypatch.setattr(gen, "generate_dsprites", fake_generate)
    gen.main(["--dset_dir", str(tmp_path / "data")])
    gen.main(["--out", str(tmp_path / "elsewhere.npz")])
    assert written == [gen.default_path(tmp_path / "data"), tmp_path / "elsewhere.npz"]
    assert gen.default_path("data") == Path("data/dsprites-dataset/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
    assert "wrote" in capsys.readouterr().out


def test_generated_files_are_told_from_others_without_unpickling(tmp_path):
    generated = tmp_path / "generated.npz"
    gen.generate_dsprites(generated, progress=False, _combos=[(0, 5, 0)])
    assert gen.is_generated(generated) is True
    real_like = tmp_path / "real.npz"  # the real file's layout, with its own metadata
    metadata = {"title": "dSprites dataset", "author": "someone", "latents_sizes": np.array(gen.FACTOR_SIZES)}
    np.savez(real_like, imgs=np.zeros((1, 64, 64), np.uint8), metadata=np.array(metadata, dtype=object))
    assert gen.is_generated(real_like) is False
    not_npz = tmp_path / "other.npz"
    not_npz.write_bytes(b"not a zip file")
    assert gen.is_generated(not_npz) is None


SLOW_GENERATION = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from loaders import dsprites_gen as gen
def slow(*combo):
    time.sleep(0.05)
    return np.zeros((1024, 64, 64), np.uint8)
gen._render_combo = slow
gen.generate_dsprites(sys.argv[1], progress=False, _combos=[(0, 0, o) for o in range(40)])
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_generation_leaves_no_temporary_file(tmp_path, signum):
    target = tmp_path / "dsprites.npz"
    script = SLOW_GENERATION.format(root=str(Path(gen.__file__).parents[1]))
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".*.tmp")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".*.tmp")), "the generation never started writing"
    process.send_signal(signum)
    returncode = process.wait(timeout=30)
    assert returncode in (-signum, 128 + signum)  # ended by the signal, as without the generator's cleanup
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_generations_are_swept_and_running_ones_kept(tmp_path):
    target = tmp_path / "dsprites.npz"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid now belongs to no process
    stale = tmp_path / f".dsprites.npz.{ended.pid}.0badc0de.tmp"  # as a SIGKILL'd generation leaves it
    running = tmp_path / f".dsprites.npz.{os.getpid()}.0123abcd.tmp"  # another generation, still going
    unrelated = tmp_path / ".other.npz.1.tmp"
    for path in (stale, running, unrelated):
        path.write_bytes(b"partial")
    gen.generate_dsprites(target, progress=False, _combos=[(0, 5, 0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, running.name, unrelated.name])
