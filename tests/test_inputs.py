"""Reading EDF inputs: pixel formats, GT rules, PNG-pair discovery and the ISBI .mat sets."""

import warnings
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from prep.edf import InputError, check_truths, discover, load_source
from prep.imageio import ImageReadError, binarise, read_image
from tests.conftest import mat_cells, write_edf_folder


def test_grey_16bit_and_rgba_read_as_8bit_rgb(tmp_path: Path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "deep.png"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([grey, grey, grey, np.full_like(grey, 7)]))
    for name in ("grey.png", "deep.png", "rgba.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8, name
        np.testing.assert_array_equal(image[:, :, 1], grey, err_msg=name)


def test_colour_order_is_rgb(tmp_path: Path):
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("rule", ["nonzero", "half", "otsu"])
def test_rules_are_exact_on_clean_masks(rule):
    mask = np.zeros((32, 32), np.uint8)
    mask[5:12, 8:20] = 255
    np.testing.assert_array_equal(binarise(np.dstack([mask] * 3), rule), mask > 0)


def test_rules_differ_on_soft_masks():
    soft = np.array([[0, 10, 127, 128, 255]], np.uint8)
    assert binarise(soft, "nonzero").tolist() == [[False, True, True, True, True]]
    assert binarise(soft, "half").tolist() == [[False, False, False, True, True]]
    with pytest.raises(ValueError, match="rule"):
        binarise(soft, "magic")


def test_broken_files_are_named(tmp_path: Path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((64, 64, 3), np.uint8) + 9)
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:-30])
    (tmp_path / "empty.png").write_bytes(b"")
    for name, message in (("text.png", "not a PNG"), ("cut.png", "truncated"), ("empty.png", "empty")):
        with pytest.raises(ImageReadError, match=message) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)


def test_png_pairs_are_found_and_excluded(tmp_path: Path):
    folder = write_edf_folder(tmp_path / "EDF", count=4, height=80, width=90)
    assert [r.name for r in discover(folder)] == ["EDF000", "EDF001", "EDF002", "EDF003"]
    assert [r.name for r in discover(folder, exclude=["EDF001", "EDF003.png"])] == ["EDF000", "EDF002"]
    with pytest.raises(InputError, match="--exclude EDF999"):
        discover(folder, exclude=["EDF999"])


def test_masks_in_another_folder(tmp_path: Path):
    folder = write_edf_folder(tmp_path / "EDF", count=2, height=80, width=90)
    gt = tmp_path / "GT"
    gt.mkdir()
    for path in folder.glob("*_GT.png"):
        path.rename(gt / path.name.replace("_GT", ""))
    refs = discover(folder, masks=gt)
    assert [r.mask_path.parent for r in refs] == [gt, gt]
    image, mask = load_source(refs[0])
    assert image.shape[:2] == mask.shape and mask.any()


def _write_v73(path: Path, key: str, arrays: list[np.ndarray]) -> None:
    """A MATLAB v7.3 file: a 512-byte header, then HDF5 with a cell array stored as object references."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs_group = handle.create_group("#refs#")
        refs = []
        for i, array in enumerate(arrays):
            if array.size:
                refs.append(refs_group.create_dataset(f"r{i}", data=array.T).ref)
            else:  # MATLAB writes [] as its dimensions with this flag
                empty = refs_group.create_dataset(f"r{i}", data=np.zeros(2, np.uint64))
                empty.attrs["MATLAB_empty"] = np.uint8(1)
                refs.append(empty.ref)
        handle.create_dataset(key, data=np.array([refs], dtype=h5py.ref_dtype))


@pytest.fixture
def mat_arrays():
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (40, 50)) for _ in range(3)]
    nuclei = [rng.uniform(0, 1, (40, 50)) > 0.8 for _ in range(3)]
    return images, nuclei


def test_mat_v5_cell_arrays(tmp_path: Path, mat_arrays):
    images, nuclei = mat_arrays
    scipy.io.savemat(tmp_path / "isbi_train.mat", {"ISBI_Train": mat_cells(images)})
    masks = mat_cells(nuclei)
    scipy.io.savemat(tmp_path / "isbi_train_GT.mat", {"train_Nuclei": masks, "train_Cytoplasm": masks})
    refs = discover(tmp_path / "isbi_train.mat", tmp_path / "isbi_train_GT.mat")
    assert [r.name for r in refs] == ["isbi_train_000", "isbi_train_001", "isbi_train_002"]
    image, mask = load_source(refs[1])
    assert image.shape == (40, 50, 3)
    np.testing.assert_array_equal(image[:, :, 0], np.rint(images[1] * 255).astype(np.uint8))
    np.testing.assert_array_equal(mask, nuclei[1])


@pytest.mark.parametrize("key, warned", [("train_Nuclei", True), ("test_Nuclei", True), ("Nuclei", False),
                                         ("my_train_Nuclei", False)])
def test_the_challenge_synthetic_set_is_flagged_as_built_from_the_real_fields(tmp_path: Path, mat_arrays, key,
                                                                                warned):
    images, nuclei = mat_arrays
    scipy.io.savemat(tmp_path / "set.mat", {"Images": mat_cells(images)})
    scipy.io.savemat(tmp_path / "set_GT.mat", {key: mat_cells(nuclei)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refs = discover(tmp_path / "set.mat", tmp_path / "set_GT.mat")
    assert len(refs) == 3
    leaks = [str(w.message) for w in caught if "16 real EDF fields" in str(w.message)]
    assert len(leaks) == (1 if warned else 0)  # once per set, not per image
    if warned:
        assert str(tmp_path / "set_GT.mat") in leaks[0] and key in leaks[0]


def test_mat_v73_hdf5(tmp_path: Path, mat_arrays):
    images, nuclei = mat_arrays
    _write_v73(tmp_path / "testset.mat", "ISBI_Test", [np.rint(a * 255).astype(np.uint8) for a in images])
    _write_v73(tmp_path / "testset_GT.mat", "test_Nuclei", [m.astype(np.uint8) for m in nuclei])
    refs = discover(tmp_path / "testset.mat", tmp_path / "testset_GT.mat")
    assert len(refs) == 3
    image, mask = load_source(refs[2])
    np.testing.assert_array_equal(image[:, :, 2], np.rint(images[2] * 255).astype(np.uint8))
    np.testing.assert_array_equal(mask, nuclei[2])


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_an_empty_mat_entry_is_an_image_without_nuclei(tmp_path: Path, mat_arrays, version: str):
    images, nuclei = mat_arrays
    images = [np.rint(a * 255).astype(np.uint8) for a in images]
    nuclei = [nuclei[0].astype(np.uint8), np.zeros((0, 0), np.uint8), nuclei[2].astype(np.uint8)]
    if version == "v5":
        scipy.io.savemat(tmp_path / "set.mat", {"ISBI_Train": mat_cells(images)})
        scipy.io.savemat(tmp_path / "set_GT.mat", {"train_Nuclei": mat_cells(nuclei)})
    else:
        _write_v73(tmp_path / "set.mat", "ISBI_Train", images)
        _write_v73(tmp_path / "set_GT.mat", "train_Nuclei", nuclei)
    refs = check_truths(discover(tmp_path / "set.mat", tmp_path / "set_GT.mat"))
    assert [r.nuclei for r in refs][1] == 0 and refs[0].nuclei > 0
    image, mask = load_source(refs[1])
    assert mask.shape == image.shape[:2] == (40, 50) and not mask.any()
    np.testing.assert_array_equal(load_source(refs[2])[1], nuclei[2] > 0)


def test_mat_without_masks_or_with_mismatch_is_refused(tmp_path: Path, mat_arrays):
    images, nuclei = mat_arrays
    scipy.io.savemat(tmp_path / "a.mat", {"ISBI_Train": mat_cells(images)})
    scipy.io.savemat(tmp_path / "a_GT.mat", {"train_Nuclei": mat_cells(nuclei[:2])})
    with pytest.raises(InputError, match="--masks"):
        discover(tmp_path / "a.mat")
    with pytest.raises(InputError, match="2 nucleus annotations for 3 images"):
        discover(tmp_path / "a.mat", tmp_path / "a_GT.mat")
