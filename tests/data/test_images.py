import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data import images
from dlforge.data.images import load_dataset, read_idx, split_validation
from dlforge.errors import DlforgeError
from tests.conftest import write_idx


def test_real_mnist_test_set(mnist_dir):
    x = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    y = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist()[:3] == [980, 1135, 1032]  # the well-known MNIST test class counts
    mean = x.mean() / 255
    assert 0.12 < mean < 0.14  # MNIST's mean is 0.1307 (train); the test set is close


def test_idx_raw_and_gzip_agree(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = read_idx(write_idx(tmp_path / "a", a, gz=False))
    gz = read_idx(write_idx(tmp_path / "b.gz", a, gz=True))
    assert (raw == a).all() and (gz == a).all()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"xx", "longer than its header"),
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad magic"),
    (lambda b: b[:2], "bad magic"),
])
def test_corrupt_idx_is_one_clear_error(tmp_path, damage, message, reliability):
    good = write_idx(tmp_path / "good", np.zeros((3, 4, 4), np.uint8), gz=False).read_bytes()
    bad = tmp_path / "bad-idx"
    bad.write_bytes(damage(good))
    with pytest.raises(DlforgeError, match=f"bad-idx.*{message}"):
        read_idx(bad)
    reliability.record("IDX file truncated, too long or with a wrong magic number", "one-line error naming the file")


def test_broken_gzip_names_the_file(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x09" + b"12345678")[:-12])
    with pytest.raises(DlforgeError, match="x.gz"):
        read_idx(p)


def test_corrupt_deflate_stream_names_the_file(tmp_path, reliability):
    """Found by tests/fuzz_atheris.py: a gzip member with invalid deflate data raised zlib.error."""
    import base64
    p = tmp_path / "x.gz"
    p.write_bytes(base64.b64decode("H4sIAKawAwAAAOFk4VcAawL/Y2DgYGJgYAAACAgAAAAA4WThVwAAAA=="))
    with pytest.raises(DlforgeError, match="x.gz: cannot read IDX data"):
        read_idx(p)
    reliability.record("IDX gzip with an invalid deflate stream (found by atheris)", "one-line error naming the file")


def test_idx_header_bomb_refused(tmp_path, reliability):
    p = tmp_path / "bomb"
    p.write_bytes(b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big"))
    with pytest.raises(DlforgeError, match="more than"):
        read_idx(p)
    reliability.record("IDX header bomb: 16 bytes declaring 60,000³ pixels", "refused before allocating")


def test_mnist_layout_from_data_dir(tiny_idx_dir):
    d = load_dataset("mnist", data_dir=str(tiny_idx_dir))
    assert d.train_x.shape == (120, 1, 12, 12) and d.train_x.dtype == torch.uint8
    assert d.test_y.shape == (40,) and d.mean == (0.1307,) and d.classes[3] == "3"


def test_missing_files_in_data_dir(tmp_path):
    with pytest.raises(DlforgeError, match="missing train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_unknown_dataset_lists_names():
    with pytest.raises(DlforgeError, match="unknown dataset 'cifar'.*digits.*fashion-mnist"):
        load_dataset("cifar")


def test_digits_is_bundled_and_stratified():
    d = load_dataset("digits")
    assert d.train_x.shape == (1437, 1, 8, 8) and d.test_x.shape == (360, 1, 8, 8)
    assert int(d.train_x.max()) == 255
    assert torch.bincount(d.test_y).min() >= 35


def test_validation_split_is_seeded_and_disjoint():
    a = split_validation(load_dataset("digits"), 0.1, seed=3)
    b = split_validation(load_dataset("digits"), 0.1, seed=3)
    assert len(a.val_y) == 144 and len(a.train_y) == 1437 - 144
    assert torch.equal(a.val_x, b.val_x)


def _png(path, value, size=(20, 14), mode="RGB"):
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def test_folder_dataset(tmp_path):
    for c, v in (("cats", 30), ("dogs", 220)):
        (tmp_path / c).mkdir()
        for i in range(5):
            _png(tmp_path / c / f"{i}.png", v + i)
    d = load_dataset("folder", data_dir=str(tmp_path), img_size=16)
    assert d.classes == ["cats", "dogs"] and d.train_x.shape[1:] == (3, 16, 16)
    assert len(d.train_y) + len(d.test_y) == 10


def test_folder_with_undecodable_image(tmp_path):
    (tmp_path / "a").mkdir()
    _png(tmp_path / "a" / "ok.png", 10)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "b").mkdir()
    _png(tmp_path / "b" / "ok.png", 10)
    with pytest.raises(DlforgeError, match="broken.png: cannot decode"):
        load_dataset("folder", data_dir=str(tmp_path))


def _gtsrb_tree(root, per_class=3, classes=(0, 1, 42)):
    """The official layout: GTSRB/Final_Training/Images/000NN/GT-000NN.csv + PPMs; GT-final_test.csv."""
    head = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    test_rows = []
    test_dir = root / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    for c in classes:
        d = root / "GTSRB" / "Final_Training" / "Images" / f"{c:05d}"
        d.mkdir(parents=True)
        rows = []
        for i in range(per_class):
            name = f"00000_{i:05d}.ppm"
            Image.fromarray(np.full((30, 32, 3), (c * 5) % 255, np.uint8)).save(d / name)
            rows.append(f"{name};32;30;5;5;26;24;{c}\n")
            tname = f"{c:05d}{i}.ppm"
            Image.fromarray(np.full((30, 32, 3), (c * 5) % 255, np.uint8)).save(test_dir / tname)
            test_rows.append(f"{tname};32;30;5;5;26;24;{c}\n")
        (d / f"GT-{c:05d}.csv").write_text(head + "".join(rows))
    (root / "GT-final_test.csv").write_text(head + "".join(test_rows))
    return root


def test_gtsrb_official_layout(tmp_path):
    d = load_dataset("gtsrb", data_dir=str(_gtsrb_tree(tmp_path)), img_size=24)
    assert len(d.classes) == 43 and d.train_x.shape == (9, 3, 24, 24)
    assert sorted(set(d.train_y.tolist())) == [0, 1, 42] and len(d.test_y) == 9


def test_gtsrb_bad_csv_line_is_reported(tmp_path):
    root = _gtsrb_tree(tmp_path)
    csv = root / "GTSRB" / "Final_Training" / "Images" / "00001" / "GT-00001.csv"
    csv.write_text(csv.read_text() + "x.ppm;1;1;a;b;c;d;1\n")
    with pytest.raises(DlforgeError, match="GT-00001.csv:5"):
        load_dataset("gtsrb", data_dir=str(root))


def test_data_list_shows_every_dataset(capsys, tmp_path, monkeypatch):
    from dlforge.cli import main
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in images.DATASETS:
        assert name in out
    # an empty cache: gtsrb's row said its cache folder, as if the data were there
    rows = {r.split()[0]: r for r in out.splitlines()}
    assert rows["gtsrb"].split(None, 1)[1].startswith(f"not yet downloaded (cache: {tmp_path / 'gtsrb'})")
    descriptions = {r.index(d) for r, d in ((rows["gtsrb"], "German Traffic"), (rows["digits"], "scikit-learn 8×8"))}
    assert len(descriptions) == 1  # one column however long the cache path (it overflowed the row)
    _gtsrb_tree(tmp_path / "gtsrb")
    assert main(["data", "list"]) == 0
    gtsrb = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("gtsrb "))
    assert gtsrb.split(None, 1)[1].startswith(f"{tmp_path / 'gtsrb'} ")


def _folder_with_bad_files(root, n_bad, per_class=4):
    """Two classes of good PNGs and n_bad broken files spread over both (a bad header, a truncated body)."""
    for c, v in (("a", 30), ("b", 220)):
        (root / c).mkdir()
        for i in range(per_class):
            _png(root / c / f"{i}.png", v + i)
    for i in range(n_bad):
        (root / "ab"[i % 2] / f"bad{i:04d}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really" if i % 3 else b"")
    return root


def test_folder_reports_every_bad_image_at_once(tmp_path, reliability):
    _folder_with_bad_files(tmp_path, 3)
    with pytest.raises(DlforgeError) as e:
        load_dataset("folder", data_dir=str(tmp_path), img_size=8)
    lines = str(e.value).splitlines()
    assert lines[0] == f"--data-dir {tmp_path}: 3 images cannot be decoded (or pass --skip-bad-images):"
    assert sorted(line.split("/")[-1].split(":")[0] for line in lines[1:]) == ["bad0000.png", "bad0001.png",
                                                                              "bad0002.png"]
    assert all(line.startswith(f"  {tmp_path}/") and ": cannot decode image" in line for line in lines[1:])
    reliability.record("folder dataset with several undecodable images",
                       "one error listing every file, before training")


def test_a_thousand_bad_images_stay_readable(tmp_path):
    _folder_with_bad_files(tmp_path, 1000)
    with pytest.raises(DlforgeError) as e:
        load_dataset("folder", data_dir=str(tmp_path), img_size=8)
    lines = str(e.value).splitlines()
    assert "1000 images cannot be decoded" in lines[0]
    assert len(lines) == 1 + images.MAX_LISTED + 1 and lines[-1] == f"  … and {1000 - images.MAX_LISTED} more"


def test_skip_bad_images_keeps_the_good_ones(tmp_path, capsys, reliability):
    _folder_with_bad_files(tmp_path, 3)
    d = load_dataset("folder", data_dir=str(tmp_path), img_size=8, skip_bad=True)
    assert len(d.train_y) + len(d.test_y) == 8 and d.classes == ["a", "b"]
    assert capsys.readouterr().err.strip() == f"dlforge: skipped 3 unreadable images in {tmp_path}"
    reliability.record("folder dataset with undecodable images and `--skip-bad-images`",
                       "skipped, their count on stderr; the rest trains")


def test_skip_bad_images_with_nothing_left_is_an_error(tmp_path):
    for c in "ab":
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.png").write_bytes(b"")
    with pytest.raises(DlforgeError, match="none of the 2 images can be decoded"):
        load_dataset("folder", data_dir=str(tmp_path), skip_bad=True)
    (tmp_path / "train").mkdir()
    _folder_with_bad_files(tmp_path / "train", 0)
    (tmp_path / "test").mkdir()
    (tmp_path / "a").rename(tmp_path / "test" / "a")  # test/a/x.png: the one test image, and bad
    with pytest.raises(DlforgeError, match="none of the test images can be decoded"):
        load_dataset("folder", data_dir=str(tmp_path), skip_bad=True)


def test_folder_bomb_is_listed_not_decoded(tmp_path, monkeypatch):
    _folder_with_bad_files(tmp_path, 1)
    _png(tmp_path / "a" / "huge.png", 0, size=(30, 30))
    monkeypatch.setattr(images, "MAX_PIXELS", 20 * 14)  # the 20×14 PNGs pass, the 30×30 one is a "bomb"
    with pytest.raises(DlforgeError, match=r"2 images cannot be decoded(.|\n)*huge.png: refused, 30×30 pixels"):
        load_dataset("folder", data_dir=str(tmp_path), img_size=8)


def test_folder_train_test_layout_reports_both_splits(tmp_path):
    for split, n_bad in (("train", 1), ("test", 2)):
        (tmp_path / split).mkdir()
        _folder_with_bad_files(tmp_path / split, n_bad)
    with pytest.raises(DlforgeError, match="3 images cannot be decoded"):
        load_dataset("folder", data_dir=str(tmp_path), img_size=8)
    for p in (tmp_path / "test").glob("*/bad*"):
        p.unlink()
    d = load_dataset("folder", data_dir=str(tmp_path), img_size=8, splits=("test",))  # train/'s bad file unread
    assert len(d.train_y) == 0 and len(d.test_y) == 8  # 2 classes × 4 good images


@pytest.mark.parametrize("data_dir, message", [
    (None, "--data folder needs --data-dir DIR: one sub-folder of images per class"),
    ("/nonexistent/dir", "--data-dir /nonexistent/dir: not a directory; expected one sub-folder of images per class"),
])
def test_folder_without_a_directory(data_dir, message):
    with pytest.raises(DlforgeError) as e:
        load_dataset("folder", data_dir=data_dir)
    assert str(e.value) == message


def test_mnist_test_split_alone(tiny_idx_dir):
    for f in tiny_idx_dir.glob("train-*"):
        f.unlink()
    d = load_dataset("mnist", data_dir=str(tiny_idx_dir), splits=("test",))
    assert d.test_x.shape == (40, 1, 12, 12) and d.train_x.shape == (0, 1, 12, 12)
    with pytest.raises(DlforgeError, match="missing train-images-idx3-ubyte, train-labels-idx1-ubyte .* for mnist$"):
        load_dataset("mnist", data_dir=str(tiny_idx_dir))


def test_gtsrb_reports_every_bad_image(tmp_path):
    root = _gtsrb_tree(tmp_path)
    for p in list((root / "GTSRB" / "Final_Training" / "Images" / "00001").glob("*.ppm"))[:2]:
        p.write_bytes(b"P6\n")
    with pytest.raises(DlforgeError, match="2 images cannot be decoded"):
        load_dataset("gtsrb", data_dir=str(root), img_size=24)
    d = load_dataset("gtsrb", data_dir=str(root), img_size=24, skip_bad=True)
    assert len(d.train_y) == 7 and len(d.test_y) == 9


def test_images_of_more_than_8_bits_are_scaled_not_clipped(tmp_path):
    """PIL's convert("L") clips at 255: a 16-bit digit decoded as a white blob, a float one (0..1) as black, and
    either was classified with no word said (file, PIL image in memory, HTTP: one decoder)."""
    from dlforge.recipes.classify import _one_image
    a = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    wide = {"g16.png": a.astype(np.uint16) * 257, "f01.tiff": a.astype(np.float32) / 255,
            "f255.tiff": a.astype(np.float32), "i32.tiff": a.astype(np.int32)}
    for name, v in wide.items():
        Image.fromarray(v).save(tmp_path / name)
        assert images.image_mode(tmp_path / name) == "L"
        for mode in ("L", "RGB"):
            got = images.decode_image(tmp_path / name, 8, mode)
            assert np.array_equal(got, np.broadcast_to(a, got.shape)), (name, mode)
        with Image.open(tmp_path / name) as im:
            assert np.array_equal(_one_image(im, 8, "L")[0].numpy(), a), name
    Image.fromarray(a.astype(np.float32) - 1).save(tmp_path / "neg.tiff")
    with pytest.raises(DlforgeError, match=r"neg.tiff: a F image with values -1\.\.251; expected floats in 0\.\.1 or"):
        images.decode_image(tmp_path / "neg.tiff", 8, "L")


def test_a_photo_is_read_upright_and_a_mode_pil_cannot_convert_is_one_line(tmp_path):
    """A phone's JPEG keeps the sensor's rows and an EXIF tag that turns them: before, the playground drew such
    a photo upright and classified it on its side. A LAB image was a ValueError (a 500 over HTTP)."""
    from dlforge.recipes.classify import _one_image
    a = np.zeros((16, 16), np.uint8)
    a[:4] = 255  # the stored rows: bright on top
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90° clockwise to view": the top of the stored image is the viewer's right
    Image.fromarray(a).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    for got in (images.decode_image(tmp_path / "phone.jpg", 16, "L")[0],
                _one_image(Image.open(tmp_path / "phone.jpg"), 16, "L")[0].numpy()):
        assert got[:, -4:].mean() > 200 and got[:, :8].mean() < 30 and got[:4, 6:10].mean() < 30
    Image.new("LAB", (8, 8)).save(tmp_path / "lab.tiff")
    with pytest.raises(DlforgeError, match=r"lab.tiff: a LAB image cannot be read as grey; save it as RGB or grey"):
        images.decode_image(tmp_path / "lab.tiff", 8, "L")
    with pytest.raises(DlforgeError, match=r"^image: a LAB image cannot be read as grey; save it as RGB or grey"):
        _one_image(Image.open(tmp_path / "lab.tiff"), 8, "L")
