"""Text corpora, tokenizers and the token loader."""
import shutil
from pathlib import Path

import pytest
import torch

from dlforge.data import text as textdata
from dlforge.data.loader import TokenLoader
from dlforge.errors import DlforgeError

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Don't — café 日本!\n"


@pytest.fixture
def shakespeare_in_cache():
    """The local copy of tinyshakespeare placed where download() looks, so it is verified, not fetched."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"the local tinyshakespeare copy is not at {SHAKESPEARE} (../shared is absent)")
    dest = textdata.corpus_path("tinyshakespeare")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHAKESPEARE, dest)
    return dest


@pytest.mark.parametrize("kind", textdata.TOKENIZERS)
def test_round_trip_and_save_restore(kind, tmp_path):
    tok = textdata.fit_tokenizer(kind, SAMPLE * 20, vocab_size=300)
    ids = tok.encode(SAMPLE)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == SAMPLE
    tok.save(tmp_path / "tokenizer.json")
    again = textdata.TextTokenizer.load(tmp_path / "tokenizer.json")
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    assert again.encode(SAMPLE) == ids and again.decode(ids) == SAMPLE


def test_word_pieces_keep_their_leading_space():
    tok = textdata.fit_tokenizer("word", "the cat sat on the mat.\n")
    assert tok.pieces("the cat sat on the mat.\n") == ["the", " cat", " sat", " on", " the", " mat", ".", "\n"]


def test_bpe_compresses_and_encodes_unseen_text():
    tok = textdata.fit_tokenizer("bpe", SAMPLE * 50, vocab_size=300)
    assert len(tok.encode(SAMPLE)) < len(SAMPLE) * 0.8
    assert tok.decode(tok.encode("Ωmega ✓")) == "Ωmega ✓"  # byte-level: nothing is unknown


def test_unseen_characters_are_a_clear_error():
    tok = textdata.fit_tokenizer("char", SAMPLE)
    with pytest.raises(DlforgeError, match="characters the char tokenizer never saw: 'Ω'"):
        tok.encode("Speak Ω")


WORDS = "the cat sat on the mat. the dog sat on the log. a cat and a dog.\n" * 3 + "zebra quagga\n"


def test_word_vocabulary_cap_keeps_the_most_frequent(capsys):
    full = textdata.fit_tokenizer("word", WORDS, vocab_size=None)
    tok = textdata.fit_tokenizer("word", WORDS, vocab_size=10)
    assert tok.vocab_size == 10 < full.vocab_size
    assert tok.vocab[:2] == list(textdata.WORD_UNKS)
    # counts: " the" "." 9, " a" " cat" " dog" " on" " sat" 6 (ties in string order), "\n" 4; " and" 3 is cut
    assert tok.vocab[2:] == [" the", ".", " a", " cat", " dog", " on", " sat", "\n"]
    err = capsys.readouterr().err
    assert "word tokenizer: the 8 most frequent of 14 distinct words" in err and "--vocab-size" in err
    assert textdata.fit_tokenizer("word", WORDS, vocab_size=10).vocab == tok.vocab  # deterministic


def test_rare_words_become_visible_unk():
    tok = textdata.fit_tokenizer("word", WORDS, vocab_size=10)
    ids = tok.encode("the zebra sat on a mat")  # "the" (no space) and " mat" are outside the cap, as is " zebra"
    assert ids.count(tok.token_id(" <unk>")) == 2 and ids[0] == tok.token_id("<unk>")
    assert tok.decode(ids) == "<unk> <unk> sat on a <unk>"  # visible, and the spaces stay
    known = " the cat sat on a dog.\n"
    assert tok.decode(tok.encode(known)) == known and tok.token_id("<unk>") not in tok.encode(known)


def test_word_vocab_size_too_small():
    with pytest.raises(DlforgeError, match="--vocab-size: the word tokenizer needs at least 3 tokens"):
        textdata.fit_tokenizer("word", WORDS, vocab_size=2)


def test_word_tokenizer_file_of_an_older_run_loads(tmp_path):
    """Format 1 word tokenizers have no <unk>: they load, encode what they know the same, refuse the rest."""
    old = tmp_path / "tokenizer.json"
    old.write_text('{"kind": "word", "vocab": [" the", " cat", "the", " sat", "."]}')
    tok = textdata.TextTokenizer.load(old)
    assert tok.vocab_size == 5 and tok.encode("the cat sat the cat.") == [2, 1, 3, 0, 1, 4]
    assert tok.decode([2, 1, 3]) == "the cat sat"
    with pytest.raises(DlforgeError, match="words the word tokenizer never saw: ' zebra'"):
        tok.encode("the zebra")
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "runs-v1" / "lm"
    char = textdata.TextTokenizer.load(fixture / "tokenizer.json")
    lines = (fixture.parent / "lines.txt").read_text()
    assert char.vocab_size == 24 and char.decode(char.encode(lines)) == lines


def test_bad_text_files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(DlforgeError, match="latin1.txt: not UTF-8 text"):
        textdata.load_corpus(None, str(tmp_path / "latin1.txt"))
    with pytest.raises(DlforgeError, match="empty.txt: the file is empty"):
        textdata.load_corpus(None, str(tmp_path / "empty.txt"))
    with pytest.raises(DlforgeError, match="cannot read"):
        textdata.load_corpus(None, str(tmp_path / "missing.txt"))
    with pytest.raises(DlforgeError, match="unknown text corpus 'wiki'; expected one of: tinyshakespeare"):
        textdata.load_corpus("wiki")
    with pytest.raises(DlforgeError, match="--vocab-size"):
        textdata.fit_tokenizer("bpe", SAMPLE, vocab_size=100)


def test_corpus_smaller_than_a_context_window():
    ids = torch.arange(100)
    train, val = textdata.split_tokens(ids, 0.1, 8, "x")
    assert torch.equal(torch.cat([train, val]), ids) and len(val) == 10  # contiguous: val is the end
    with pytest.raises(DlforgeError, match="less than one context window \\(--block-size 32"):
        textdata.split_tokens(ids, 0.1, 32, "--data-file x")


def test_tinyshakespeare_is_verified_and_loaded(shakespeare_in_cache):
    text = textdata.load_corpus("tinyshakespeare")
    assert len(text) == 1115394 and text.startswith("First Citizen:")
    tok = textdata.fit_tokenizer("char", text)
    assert tok.vocab_size == 65
    shakespeare_in_cache.write_text("tampered")  # a wrong checksum means re-download: refuse offline
    with pytest.raises(DlforgeError):
        textdata.download(textdata.CORPORA["tinyshakespeare"].url.replace("https://", "http://127.0.0.1:9/"),
                          shakespeare_in_cache, textdata.CORPORA["tinyshakespeare"].checksum, retries=1)


def test_streams_continue_row_by_row_and_replay():
    ids = torch.arange(1000)
    loader = TokenLoader(ids, batch_size=4, block_size=10, mode="streams", seed=3)
    batches = list(loader.epoch(1))
    assert len(batches) == len(loader) == 24
    (x0, y0, r0), (x1, _, r1) = batches[0], batches[1]
    assert bool(r0) and not bool(r1)
    assert torch.equal(y0, x0 + 1) and torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b continues row b
    assert torch.equal(list(loader.epoch(1, start=5))[0][0], batches[5][0])  # replayable from any batch


def test_windows_are_seeded_and_replayable():
    ids = torch.arange(1000)
    loader = TokenLoader(ids, batch_size=4, block_size=10, mode="windows", seed=3)
    a = list(loader.epoch(2))
    assert torch.equal(a[3][0], list(loader.epoch(2, start=3))[0][0])
    assert torch.equal(a[0][1], a[0][0] + 1) and not torch.equal(a[0][0], list(loader.epoch(3))[0][0])


def test_windows_never_repeat_across_epochs_and_batches():
    """Every (epoch, batch) draws its own windows: the seeds' hash used to give consecutive batches consecutive
    seeds and overlap the epochs, so 42% of a language model's batches were repeats (issue 20, part 1)."""
    ids = torch.arange(200_000)
    loader = TokenLoader(ids, batch_size=8, block_size=16, mode="windows", seed=0)  # 1,562 batches an epoch
    offsets = torch.cat([x[:, 0] for e in range(3) for x, _, _ in loader.epoch(e)])
    n, space = len(offsets), len(ids) - 16
    expected = space * (1 - (1 - 1 / space) ** n)  # distinct values among n independent uniform draws
    assert abs(len(offsets.unique()) - expected) < 5 * expected ** 0.5
    from dlforge.data.loader import _seeded
    low = {_seeded(s, e, i).initial_seed() & 0xFFFFFFFF for s in range(3) for e in range(200) for i in range(100)}
    assert len(low) >= 60_000 - 2  # torch keeps 32 bits of a seed: those must differ (birthday: ~0.4 collisions)


def test_shuffled_windows_read_every_token_once_an_epoch():
    """tiles (--sampling shuffled): each epoch, windows of T that do not overlap, from a seeded shift, in a seeded
    order; random windows (nanoGPT's) cover some tokens twice and miss others (issue 20, part 1)."""
    ids = torch.arange(10_007)
    loader = TokenLoader(ids, batch_size=8, block_size=16, mode="tiles", seed=4)
    assert len(loader) == 78  # as many batches as random windows make: (N - 1) // (B·T)
    for e in range(3):
        batches = list(loader.epoch(e))
        x = torch.cat([b[0] for b in batches])
        assert len(batches) == 78 and torch.equal(torch.cat([b[1] for b in batches]), x + 1)
        assert torch.equal(x, x[:, :1] + torch.arange(16))  # each row one window of the stream
        starts = x[:, 0]
        assert len(starts.unique()) == len(starts) == 78 * 8 and len((starts % 16).unique()) == 1  # no overlap
        assert starts.diff().abs().min() < 16 * 5 and not bool((starts.diff() > 0).all())  # shuffled, not in order
        assert torch.equal(list(loader.epoch(e, start=40))[0][0], batches[40][0])  # replayable from any batch
    shifts = {int(list(loader.epoch(e))[0][0][0, 0]) % 16 for e in range(8)}
    assert len(shifts) > 1  # each epoch its own shift: every token is some window's first over the epochs
    short = TokenLoader(torch.arange(40), batch_size=8, block_size=16, mode="tiles", seed=0)  # 2 windows for 8 rows
    (x, y, _), = short.epoch(0)
    assert x.shape == (8, 16) and torch.equal(y, x + 1) and len(x[:, 0].unique()) == 2


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_streamed_pieces_join_to_the_decoded_text(kind):
    """decode_stream decodes only the tokens not yet shown; its pieces still join to decode(all): bpe ids
    drawn at random split (and break) UTF-8 characters over tokens."""
    from dlforge.recipes.language_model import decode_stream
    text = "naïve café — Ωmega 東京 " * 6 + SAMPLE
    tok = textdata.fit_tokenizer(kind, text * 10, vocab_size=300)
    gen = torch.Generator().manual_seed(0)
    waited = 0
    for ids in [tok.encode(text), *(torch.randint(tok.vocab_size, (200,), generator=gen).tolist() for _ in range(5))]:
        pieces = list(decode_stream(tok, iter(ids)))
        assert "".join(pieces) == tok.decode(ids)
        counted = list(decode_stream(tok, iter(ids), counts=True))  # the server's usage: the tokens each decodes
        assert [t for t, _ in counted] == pieces and sum(n for _, n in counted) == len(ids)
        waited += len(ids) - len(pieces)
    assert (waited > 0) == (kind == "bpe")  # char and word: one piece per token; bpe waits for whole characters


def test_a_damaged_tokenizer_file_is_named(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"vocab": []}')  # before: "unreadable tokenizer file (KeyError: 'kind')", naming no file
    with pytest.raises(DlforgeError, match=f"^{bad}: unreadable tokenizer file \\(KeyError: 'kind'\\)$"):
        textdata.TextTokenizer.load(bad)
