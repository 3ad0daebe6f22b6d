"""mattrt.data.synthetic and `mattrt synth`: determinism, exact ground truth, argument errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mattrt.cli import main
from mattrt.data import synthetic
from mattrt.errors import InputError
from mattrt.imageio import read_alpha, read_image, to_float32

ALL_VARIANTS = [(kind, variant) for kind, variants in synthetic.VARIANTS.items() for variant in variants]
SIZE = (96, 72)  # width, height: non-square on purpose


def _matting_equation(alpha, fg, bg):
    a = alpha.astype(np.float64)[..., None]
    return a * fg.astype(np.float64) + (1 - a) * bg.astype(np.float64)


@pytest.mark.parametrize("kind, variant", ALL_VARIANTS)
def test_same_generator_state_gives_identical_samples(kind, variant):
    first = synthetic.generate_sample(kind, SIZE, synthetic.sample_rng(7, 3), variant=variant)
    second = synthetic.generate_sample(kind, SIZE, synthetic.sample_rng(7, 3), variant=variant)
    other = synthetic.generate_sample(kind, SIZE, synthetic.sample_rng(8, 3), variant=variant)
    for name in ("image", "alpha", "fg", "bg"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.alpha, other.alpha)


@pytest.mark.parametrize("kind, variant", ALL_VARIANTS)
def test_sample_arrays_ground_truth_and_composite(kind, variant):
    sample = synthetic.generate_sample(kind, SIZE, synthetic.sample_rng(1, 0), variant=variant)
    assert sample.kind == kind and sample.variant == variant and sample.size == SIZE
    assert sample.image.shape == sample.fg.shape == sample.bg.shape == (72, 96, 3)
    assert sample.image.dtype == sample.fg.dtype == sample.bg.dtype == np.uint8
    assert sample.alpha.shape == (72, 96) and sample.alpha.dtype == np.float32
    assert sample.alpha.min() >= 0 and sample.alpha.max() <= 1
    # The alpha is exactly its 16-bit levels, so what is written is what was used.
    np.testing.assert_array_equal(to_float32(sample.alpha16()), sample.alpha)
    difference = np.abs(sample.image - _matting_equation(sample.alpha, sample.fg, sample.bg))
    assert difference.max() <= 0.5 + 1e-9


@pytest.mark.parametrize("kind, variant", ALL_VARIANTS)
def test_every_variant_has_a_meaningful_unknown_band(kind, variant):
    for seed in range(3):
        sample = synthetic.generate_sample(kind, (128, 112), synthetic.sample_rng(seed, 0), variant=variant)
        assert sample.unknown_fraction() > 0.02, (kind, variant, seed)
        if kind.startswith("salient"):
            assert (sample.alpha == 0).mean() > 0.2  # the background shows around the object
        if kind == "salient_opaque":
            assert (sample.alpha == 1).mean() > 0.05  # an opaque body


def test_kinds_draw_all_their_variants():
    for kind, variants in synthetic.VARIANTS.items():
        drawn = {synthetic.generate_sample(kind, (32, 32), synthetic.sample_rng(seed, 0)).variant for seed in range(30)}
        assert drawn == set(variants)


def test_make_trimap_by_hand():
    alpha = np.zeros((5, 7))
    alpha[:, 4:] = 1.0
    alpha[2, 3] = 0.5
    trimap = synthetic.make_trimap(alpha, radius=1)
    expected = np.zeros((5, 7), dtype=np.uint8)
    expected[:, 4:] = 255
    expected[1:4, 2:5] = 128  # 3x3 window around the one partial pixel
    np.testing.assert_array_equal(trimap, expected)
    np.testing.assert_array_equal(synthetic.make_trimap(alpha, radius=0) == 128, (alpha > 0) & (alpha < 1))


@pytest.mark.parametrize("text, size", [("512x384", (512, 384)), ("64X64", (64, 64)), ("300", (300, 300)),
                                        (" 20 x 10 ", (20, 10))])
def test_parse_size(text, size):
    assert synthetic.parse_size(text) == size


@pytest.mark.parametrize("text, message", [("0x10", "too small"), ("10x0", "too small"), ("4x64", "at least 8"),
                                           ("512x", "WIDTHxHEIGHT"), ("-5x5", "WIDTHxHEIGHT"), ("big", "WIDTHxHEIGHT"),
                                           ("1.5x2", "WIDTHxHEIGHT")])
def test_parse_size_errors(text, message):
    with pytest.raises(InputError, match=message):
        synthetic.parse_size(text)


def test_generate_sample_argument_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown sample kind"):
        synthetic.generate_sample("opaque", SIZE, rng)
    with pytest.raises(InputError, match="unknown variant"):
        synthetic.generate_sample("non_salient", SIZE, rng, variant="hair")
    with pytest.raises(InputError, match="too small"):
        synthetic.generate_sample("non_salient", (0, 10), rng)
    with pytest.raises(InputError, match="Generator"):
        synthetic.generate_sample("non_salient", SIZE, 42)


def _synth(out, *extra):
    return main(["synth", "--out", str(out), "--count", "4", "--size", "48x40", "--seed", "11", "--no-progress", *extra])


def test_synth_cli_is_byte_identical_per_seed_and_exact(tmp_path):
    assert _synth(tmp_path / "a") == 0
    assert _synth(tmp_path / "b") == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 4 * 5 + 1
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["seed"] == 11 and manifest["size"] == [48, 40] and manifest["count"] == 4
    kinds = [s["kind"] for s in manifest["samples"]]
    assert kinds == ["salient_opaque", "salient_transparent", "non_salient", "salient_opaque"]
    for entry in manifest["samples"]:
        image = read_image(tmp_path / "a" / entry["files"]["image"])
        alpha_file = read_image(tmp_path / "a" / entry["files"]["alpha"])
        assert alpha_file.bit_depth == 16 and image.size == (48, 40)
        alpha = read_alpha(tmp_path / "a" / entry["files"]["alpha"])
        fg = read_image(tmp_path / "a" / entry["files"]["fg"]).rgb
        bg = read_image(tmp_path / "a" / entry["files"]["bg"]).rgb
        assert np.abs(image.rgb - _matting_equation(alpha, fg, bg)).max() <= 0.5 + 1e-9
        # The files hold exactly the sample the API makes from the manifest's seed and index.
        sample = synthetic.generate_sample(entry["kind"], entry["size"],
                                           synthetic.sample_rng(entry["seed"], entry["index"]))
        assert sample.variant == entry["variant"]
        np.testing.assert_array_equal(alpha, sample.alpha)
        np.testing.assert_array_equal(image.rgb, sample.image)
        trimap = read_image(tmp_path / "a" / entry["files"]["trimap"]).rgb[..., 0]
        assert set(np.unique(trimap)) <= {0, 128, 255}
        assert (trimap[(alpha > 0) & (alpha < 1)] == 128).all()


def test_synth_cli_refuses_an_existing_set_unless_overwrite(tmp_path, capsys):
    assert _synth(tmp_path / "a") == 0
    capsys.readouterr()
    assert _synth(tmp_path / "a") == 1
    assert "already holds a synthetic set" in capsys.readouterr().err
    assert _synth(tmp_path / "a", "--overwrite") == 0


@pytest.mark.parametrize("arguments, message", [
    (["--count", "0"], "count must be a positive"),
    (["--count", "2", "--size", "0x10"], "too small"),
    (["--count", "2", "--size", "axb"], "WIDTHxHEIGHT"),
    (["--count", "2", "--kinds", "salient_opaque,smoke"], "unknown sample kind 'smoke'"),
    (["--count", "2", "--trimap-radius", "-1"], "radius"),
])
def test_synth_cli_argument_errors(tmp_path, capsys, arguments, message):
    code = main(["synth", "--out", str(tmp_path / "out"), "--no-progress", *arguments])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_synth_cli_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["synth", "--out", str(blocker / "set"), "--count", "1", "--size", "16", "--no-progress"]) == 1
    assert "cannot create the output folder" in capsys.readouterr().err


def test_write_dataset_subset_of_kinds(tmp_path):
    manifest = synthetic.write_dataset(tmp_path / "s", 2, (24, 16), seed=0, kinds=["non_salient"], progress=False)
    assert [s["kind"] for s in manifest["samples"]] == ["non_salient", "non_salient"]
    assert (tmp_path / "s" / "alpha" / "00001_non_salient.png").is_file()
