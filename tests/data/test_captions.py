"""Caption templates, the caption tokenizer, replayable caption batches and the captions CSV."""
import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data import captions as C
from dlforge.errors import DlforgeError


def test_templates_per_class():
    digits = C.class_captions("digits", [str(i) for i in range(10)])
    assert "a handwritten seven" in digits[7] and "the digit 7" in digits[7] and len(set(digits[7])) == len(digits[7])
    fashion = C.class_captions("fashion-mnist", ["x"] * 10)
    assert {"a photo of an ankle boot", "an ankle boot", "a boot"} <= set(fashion[9])
    assert not set(fashion[6]) & set(fashion[0])  # shirt and t-shirt never share a caption
    assert C.canonical_prompts("fashion-mnist", ["x"] * 10)[9] == "an ankle boot"


def test_tokenizer_unknown_words_and_refusals(tmp_path):
    tok = C.CaptionTokenizer.fit(["a handwritten seven", "the digit 7"])
    assert tok.vocab[:3] == list(C.SPECIALS) and tok.max_len == 16
    ids, unknown = tok.encode_prompt("A handwritten purple seven!")
    assert ids[0] == C.BOS and ids[3] == C.UNK and unknown == ["purple"]
    for bad, msg in (("", "empty"), ("   ", "empty"), ("!!!", "no words"), ("purple cow", "none of its words"),
                     ("seven " * 20, "at most 15")):
        with pytest.raises(DlforgeError, match=msg):
            tok.encode_prompt(bad)
    tok.save(tmp_path / "c.json")
    again = C.CaptionTokenizer.load(tmp_path / "c.json")
    assert again.vocab == tok.vocab and torch.equal(again.null(2), torch.tensor([[1] + [0] * 15] * 2))


def test_caption_batches_replay_from_any_position():
    classes = C.class_captions("digits", [str(i) for i in range(10)])
    tok = C.CaptionTokenizer.fit([c for caps in classes for c in caps])
    table = C.CaptionTable(tok, classes)
    x, y = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8), torch.arange(50) % 10
    batches = C.CaptionBatches(x, y, table, 8, 16, seed=3)
    full = list(batches.epoch(1))
    tail = list(batches.epoch(1, start=4))
    assert len(full) == 7 and all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(full[4:], tail))
    xb, ids = full[0]
    assert xb.shape == (8, 1, 16, 16) and xb.min() >= -1 and xb.max() <= 1
    assert not torch.equal(full[0][1], list(batches.epoch(2))[0][1])  # another epoch, other captions
    order = batches.loader.order(1)[:8]
    words = [{tok.vocab[i] for i in row.tolist()} for row in ids]
    for w, label in zip(words, y[order].tolist()):  # each caption names its image's class
        assert C.DIGIT_WORDS[label] in w or str(label) in w


def test_captions_csv_errors_name_their_lines(tmp_path):
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "a.png")
    good = tmp_path / "ok.csv"
    good.write_text('image_path,caption\na.png,"a red, round thing"\n\na.png,a square\n')
    files, caps = C.read_captions_csv(good)
    assert caps == ["a red, round thing", "a square"] and files[0] == tmp_path / "a.png"
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,one\nb.png,two\na.png,three\nc.png,four\nd.png,five\n")
    with pytest.raises(DlforgeError, match=r"bad.csv:2: image 'b.png' not found and 2 more \(lines 4, 5\)"):
        C.read_captions_csv(bad)
    bad.write_text("a.png,one\na.png\n")
    with pytest.raises(DlforgeError, match="bad.csv:2: expected 2 columns"):
        C.read_captions_csv(bad)
    bad.write_text("a.png,one\na.png, ...\n")
    with pytest.raises(DlforgeError, match="bad.csv:2: empty caption"):
        C.read_captions_csv(bad)


def test_captions_csv_reports_every_undecodable_image_with_its_line(tmp_path, capsys, reliability):
    for i in range(3):
        Image.fromarray(np.full((6, 6), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (tmp_path / "empty.png").write_bytes(b"")
    csv = tmp_path / "caps.csv"
    csv.write_text("image_path,caption\n0.png,a dark square\nbad.png,a broken one\n1.png,a grey square\n"
                   "empty.png,nothing at all\n2.png,a light square\n")
    with pytest.raises(DlforgeError) as e:
        C.read_captions_images(csv, 8)
    lines = str(e.value).splitlines()
    assert lines[0] == f"--data {csv}: 2 images cannot be decoded (or pass --skip-bad-images):"
    assert lines[1].startswith(f"  caps.csv:3: {tmp_path / 'bad.png'}: cannot decode image")
    assert lines[2].startswith(f"  caps.csv:5: {tmp_path / 'empty.png'}: cannot decode image") and len(lines) == 3
    x, caps = C.read_captions_images(csv, 8, skip_bad=True)
    assert x.shape == (3, 1, 8, 8) and caps == ["a dark square", "a grey square", "a light square"]
    assert x[:, 0, 0, 0].tolist() == [0, 60, 120]  # each image stays with its own caption
    assert capsys.readouterr().err.strip() == f"dlforge: skipped 2 unreadable images in {csv}"
    reliability.record("captions CSV listing undecodable images", "one error naming each file's CSV line; "
                       "or skipped with `--skip-bad-images`")
