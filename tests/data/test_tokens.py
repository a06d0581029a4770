"""Corpora tokenized once into a memory-mapped cache: folders of text (gzip too), chunked encoding equal to
whole encoding, the cache and the fitted tokenizer reused, the narrowest id type, the characters of a tail,
and `dlforge data prepare`."""
import gzip
import random

import numpy as np
import pytest

from dlforge.cli import main
from dlforge.data import text as textdata
from dlforge.data import tokens
from dlforge.errors import DlforgeError
from dlforge.recipes import language_model as lm


def _lines(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "ça", "über", "日本"]
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) + "\n" for _ in range(n))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text(_lines(300, 1))
    (root / "sub" / "b.md").write_text(_lines(300, 2))
    with gzip.open(root / "sub" / "c.py.gz", "wt") as f:
        f.write(_lines(300, 3))
    (root / "picture.png").write_bytes(b"\x89PNG not text")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def test_a_folder_is_its_text_files_in_order(folder):
    files = tokens.corpus_files(folder)
    assert [f.relative_to(folder).as_posix() for f in files] == ["a.txt", "sub/b.md", "sub/c.py.gz"]
    text = "".join(t for t, _ in tokens.text_chunks(files))
    assert text == _lines(300, 1) + _lines(300, 2) + _lines(300, 3)  # the gzipped file decompressed
    with pytest.raises(DlforgeError, match="holds no text files"):
        tokens.corpus_files(folder / ".git")


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_chunked_tokenization_equals_the_whole_text(kind, folder, monkeypatch):
    files = tokens.corpus_files(folder)
    text = "".join(t for t, _ in tokens.text_chunks(files))
    tok = textdata.fit_tokenizer(kind, text, 300)
    monkeypatch.setattr(tokens, "CHUNK_BYTES", 1000)  # dozens of chunks, each ending at a line break
    t = tokens.tokenize(files, tok, tokens.digest(files), progress=False, workers=2)
    assert len(t.chunk_tokens) >= 15
    assert t.ids.dtype == tokens.torch.uint16 and np.array_equal(t.ids.read().long().numpy(), tok.encode(text))
    start = len(t.ids) - 777
    assert t.chars_from(start, tok) == len(tok.decode(t.ids[start:].long().tolist()))
    monkeypatch.setattr(tokens, "READ_TOKENS", 100)  # a long slice is a view of the file; a short one a tensor
    view = t.ids[10:len(t.ids) - 10]
    assert isinstance(view, tokens.TokenArray) and len(view) == len(t.ids) - 20
    assert view[5:25].tolist() == t.ids.read(15, 20).tolist() == tok.encode(text)[15:35]


def test_the_cache_is_reused_and_keyed_by_content_and_tokenizer(folder, tmp_path):
    files = tokens.corpus_files(folder)
    d = tokens.digest(files)
    tok = textdata.fit_tokenizer("char", "".join(t for t, _ in tokens.text_chunks(files)))
    first = tokens.tokenize(files, tok, d, progress=False)
    again = tokens.tokenize(files, tok, d, progress=False)
    assert again.path == first.path and again.seconds == 0.0
    (folder / "a.txt").write_text(_lines(301, 1))  # other content: another cache file
    other = tokens.tokenize(files, tok, tokens.digest(files), progress=False)
    assert other.path != first.path and len(other.ids) > len(first.ids)


def test_runs_of_one_corpus_at_once_tokenize_it_once(folder):
    """Four tokenizations at once (as torchrun's ranks or two trainings start): one writes the cache, the others
    wait for it and map it; before the lock they shared one .part file and failed."""
    from concurrent.futures import ThreadPoolExecutor
    files = tokens.corpus_files(folder)
    d = tokens.digest(files)
    tok = textdata.fit_tokenizer("char", "".join(t for t, _ in tokens.text_chunks(files)))
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: tokens.tokenize(files, tok, d, progress=False, workers=1), range(4)))
    assert sum(t.seconds > 0 for t in done) == 1
    want = tok.encode("".join(t for t, _ in tokens.text_chunks(files)))
    assert all(t.ids.read(0, len(want)).tolist() == want for t in done)


def test_the_fitted_tokenizer_is_cached(folder):
    files = tokens.corpus_files(folder)
    calls = []
    fit = lambda fs: calls.append(1) or textdata.TextTokenizer("char", vocab=tokens.characters(fs))  # noqa: E731
    a = tokens.cached_tokenizer(files, tokens.digest(files), "char", None, fit)
    b = tokens.cached_tokenizer(files, tokens.digest(files), "char", None, fit)
    assert calls == [1] and a.to_json() == b.to_json()


def test_the_narrowest_id_type():
    assert tokens.dtype_for(65) == np.uint16 and tokens.dtype_for(65536) == np.uint16
    assert tokens.dtype_for(65537) == np.uint32


def test_word_and_bpe_fit_on_a_bounded_sample_spread_over_the_corpus(folder, monkeypatch):
    files = tokens.corpus_files(folder)
    monkeypatch.setattr(tokens, "CHUNK_BYTES", 500)
    sample = tokens.sample_text(files, limit=3000)
    assert 2000 < len(sample.encode()) < 4000
    assert sample.splitlines()[0] in _lines(300, 1) and sample.splitlines()[-1] in _lines(300, 3)  # first to last


def test_a_file_that_is_not_utf8_is_named(folder):
    (folder / "sub" / "bad.txt").write_bytes(b"ok\n\xff\xfe broken\n")
    with pytest.raises(DlforgeError, match="bad.txt: not UTF-8 text"):
        lm.prepare(lm.TextDataConfig(name=None, data_file=str(folder), block_size=8))


def test_training_reads_the_map_and_data_prepare_makes_it_first(folder, tmp_path, capsys, one_thread):
    assert main(["data", "prepare", "--data-file", str(folder), "--tokenizer", "bpe", "--vocab-size", "300",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 file(s)" in out and "torch.uint16" in out and "MB/s tokenizing" in out
    data = lm.prepare(lm.TextDataConfig(name=None, data_file=str(folder), tokenizer="bpe", vocab_size=300,
                                        block_size=16))
    assert str(data.train.dtype) == "torch.uint16"
    assert main(["train", "gpt-tiny", "--data-file", str(folder), "--tokenizer", "bpe", "--vocab-size", "300",
                 "--block-size", "16", "--batch-size", "8", "--max-steps", "5", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    assert "tokenized" not in capsys.readouterr().err  # the prepared cache was mapped, not made again
    assert main(["data", "prepare", "--data-file", str(folder), "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    assert "already in the cache" in capsys.readouterr().out
