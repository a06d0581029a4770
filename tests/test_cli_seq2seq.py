"""The encoder–decoder end to end through the command line: numbers in words (num2words) and a user
TSV corpus: train, resume, translate (greedy, beam, attention map), eval, bad input."""
import json
import random
from pathlib import Path

import pytest

from dlforge.cli import main
from dlforge.data import pairs as P
from dlforge.errors import DlforgeError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--no-progress", "--batch-size", "32", "--lr", "3e-3", "--eval-every", "40", "--width", "48",
        "--heads", "2", "--layers", "2"]


def _val(run: Path, key: str) -> list[float]:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines() if key in x]


@pytest.fixture(scope="module")
def numbers_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "numbers"
    assert main(["train", "transformer-tiny", "--data", "numbers", "--langs", "en", "--train-pairs", "1500",
                 "--val-numbers", "20", "--test-numbers", "30", "--vocab-size", "300", *FAST, "--max-steps", "120",
                 "--out", str(out)]) == 0
    return out


def test_numbers_split_never_shares_a_number():
    pool, val, test = P.split_numbers(50, 100, seed=0)
    assert len(pool) + len(val) + len(test) == P.MAX_NUMBER + 1
    assert not set(pool) & set(test) and not set(pool) & set(val) and not set(val) & set(test)
    train, vpairs, tpairs = P.numbers_corpus(("pl", "it"), 200, 50, 100)
    assert {int(p.src) for p in train if p.to != P.DIGITS}.isdisjoint(test)
    assert {int(p.tgt) for p in train if p.to == P.DIGITS}.isdisjoint(test)
    assert len(tpairs) == 100 * 2 * 2 and {p.group for p in tpairs} == {"digits->pl", "pl->digits", "digits->it",
                                                                         "it->digits"}
    short = [p for p in train if p.to != P.DIGITS and len(p.src) <= 3]
    assert len(short) > 0.2 * len(train) / 2  # half the sample has a uniform digit count
    assert P.Pair("1234", "mil duzentos e trinta e quatro", "pt", "digits->pt") in P.number_pairs([1234], ("pt",))


def test_loss_falls_and_the_run_is_complete(numbers_run):
    losses = _val(numbers_run, "val_loss")
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0] < 0.8 * 5.7  # ln(300 tokens) = 5.7
    assert _val(numbers_run, "val_exact[digits->en]")  # per-direction exact match during training
    for f in ("config.json", "src_tokenizer.json", "report.json", "attention.png", "learning_curves.png",
              "checkpoints/best.safetensors"):
        assert (numbers_run / f).is_file(), f


def test_translate_greedy_beam_json_and_attention_map(numbers_run, tmp_path, capsys):
    png = tmp_path / "att.png"
    assert main(["translate", str(numbers_run), "1234", "77", "--to", "en", "--json"]) == 0
    greedy = json.loads(capsys.readouterr().out)["translations"]
    assert [g["source"] for g in greedy] == ["1234", "77"] and all(isinstance(g["translation"], str) for g in greedy)
    assert main(["translate", str(numbers_run), "1234", "--to", "en", "--beam", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["translations"] == greedy[:1]  # one text: the same shape
    assert main(["translate", str(numbers_run), "one thousand", "--to", "digits", "--beam", "3",
                 "--attention-map", str(png)]) == 0
    assert png.stat().st_size > 5000


def test_eval_json_per_direction(numbers_run, capsys):
    full = (numbers_run / "report.json").read_bytes()
    assert main(["eval", str(numbers_run), "--json", "--limit", "10", "--beam", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    # part of the test split is reported beside the full report, not over it (it replaced it)
    assert (numbers_run / "report.json").read_bytes() == full
    assert json.loads((numbers_run / "report-limit10.json").read_text()) == r
    assert r["test_pairs"] == 20 and set(r["per_direction"]) == {"all", "digits->en", "en->digits"}
    assert 0 <= r["exact_match"] <= 1 and r["cer"] >= 0 and r["sentences_per_s"] > 0


def test_resume_continues(numbers_run, tmp_path):
    import shutil
    run = tmp_path / "r"
    shutil.copytree(numbers_run, run)
    assert main(["train", "transformer-tiny", "--resume", "--out", str(run), *FAST, "--max-steps", "160"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 160


@pytest.mark.parametrize("args, message", [
    (["translate", "RUN", "", "--to", "en"], "empty"),
    (["translate", "RUN", "12", "--to", "xx"], "unknown target 'xx'.*en, digits"),
    (["translate", "RUN", "12"], "--to: this model translates into en, digits"),
    (["translate", "RUN", "1" * 200, "--to", "en"], "tokens long; this model reads at most 128"),
    (["translate", "RUN", "12", "--to", "en", "--beam", "0"], "--beam: expected 1..64"),
    (["eval", "RUN", "--limit", "0"], "--limit: expected at least 1"),
    # before: "--test-numbers: out of range (PairDataConfig(name='numbers', data_file=None, …" cut at 200 characters
    (["train", "transformer-tiny", "--test-numbers", "0"], "^dlforge: error: --test-numbers: expected at least 1, got 0$"),
    (["train", "transformer-tiny", "--max-len", "2"], "^dlforge: error: --max-len: expected at least 4 tokens, got 2$"),
    (["train", "transformer-tiny", "--test-numbers", "600000"],
     r"^dlforge: error: --val-numbers \+ --test-numbers: expected fewer than 499,999 \(half the numbers\), got 600,100$"),
    # an option of the other kind of corpus, silently ignored before
    (["train", "transformer-tiny", "--val-fraction", "0.1"],
     r"^dlforge: error: --val-fraction: applies to a corpus of pairs \(--data-file\), not to --data numbers$"),
    (["train", "transformer-tiny", "--data-file", "RUN", "--langs", "en"],
     "^dlforge: error: --langs: applies to --data numbers, not to a corpus of pairs$"),
])
def test_bad_input_is_one_line(numbers_run, args, message, capsys):
    assert main([str(numbers_run) if a == "RUN" else a for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    import re
    assert re.search(message, err), err


def _tsv(path: Path, n: int = 400) -> Path:
    """A toy 'translation': reverse the words and upper-case them."""
    rng = random.Random(0)
    words = "red green blue cat dog sun moon tree".split()
    lines = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        lines.append(f"{s}\t{' '.join(reversed(s.upper().split()))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_untrained_byte_level_model_is_evaluated_and_its_attention_drawn(tmp_path, capsys):
    # a 3-step model with the default BPE writes bytes that are not UTF-8; each decodes to U+FFFD, which encodes
    # again as three bytes, so drawing its attention (the last step of training, eval, translate
    # --attention-map) failed: "a sequence of 382 tokens is longer than the model's maximum length (128)"
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{n}\t{str(n)[::-1]}\n" for n in range(100, 400)))
    run = tmp_path / "bpe"
    assert main(["train", "transformer-tiny", "--data-file", str(tsv), "--max-steps", "3", "--no-progress",
                 "--out", str(run)]) == 0
    assert (run / "report.json").is_file() and (run / "attention.png").is_file()
    assert main(["translate", str(run), "123", "--attention-map", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 1000
    from dlforge.recipes.seq2seq import Translator
    a = Translator(run).cross_attention("123", None, translation="\ufffd" * 200)
    assert len(a["output_tokens"]) == 128 and a["output_tokens"][-1] == "…"
    assert a["layers"][0].shape[1] == 128
    capsys.readouterr()
    tsv.write_text("".join(f"{n}\t{n}\n" for n in range(100, 400)))  # another task: eval says so (it did not)
    assert main(["eval", str(run), "--limit", "2"]) == 0
    assert f"dlforge: note: --data-file {tsv} changed since training (sha256 differs)" in capsys.readouterr().err
    assert main(["train", "transformer-tiny", "--out", str(run), "--resume", "--max-steps", "4"]) == 2
    assert "has changed since the run began (its sha256 differs)" in capsys.readouterr().err


def test_tsv_corpus_char_tokenizer_with_bleu(tmp_path, capsys):
    out = tmp_path / "tsv"
    assert main(["train", "transformer-tiny", "--data-file", str(_tsv(tmp_path / "p.tsv")), "--tokenizer", "char",
                 "--separate-vocab", *FAST, "--max-steps", "240", "--epochs", "100", "--out", str(out)]) == 0  # 160: 0.58-0.79 over 4 seeds
    losses = _val(out, "val_loss")
    assert losses[-1] < 0.7 * losses[0]
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "bleu" in r and 0 <= r["bleu"] <= 100 and r["per_direction"].keys() == {"all"}
    assert main(["translate", str(out), "red cat"]) == 0
    assert main(["translate", str(out), "red cat", "--to", "en"]) == 2


def test_a_character_only_a_held_out_line_holds_is_in_the_char_vocabulary(tmp_path, capsys):
    # before: "the text has characters the char tokenizer never saw: 'ü'" when only a validation or test line
    # held it: the split is the run's, not the user's
    from dlforge.recipes.seq2seq import PairDataConfig, _corpus
    lines = [f"{n}\t{str(n)[::-1]}" for n in range(100, 300)]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    dc = PairDataConfig(data_file=str(tsv), tokenizer="char", val_fraction=0.2, test_fraction=0.2)
    held_out = _corpus(dc, 0)[2][0].src  # a test line: it alone gets the new character
    tsv.write_text("\n".join(line.replace(f"{held_out}\t", f"{held_out}ü\t") for line in lines) + "\n")
    train, val, test, _ = _corpus(dc, 0)
    assert not any("ü" in p.src + p.tgt for p in train) and any("ü" in p.src for p in test)
    run = tmp_path / "r"
    assert main(["train", "transformer-tiny", "--data-file", str(tsv), "--tokenizer", "char", "--val-fraction", "0.2",
                 "--test-fraction", "0.2", "--max-steps", "2", "--no-progress", "--out", str(run)]) == 0
    assert main(["translate", str(run), "ü12"]) == 0


@pytest.mark.parametrize("body, message", [
    ("a\tb\nc d\n", "line 2: expected source<TAB>target, found 0 tabs"),
    ("a\tb\nc\t\n", "line 2: the target is empty"),
    ("a\tb\tc\n", "line 1: expected source<TAB>target, found 2 tabs"),
    ("a\tb\n\n", "1 pairs; need at least 3"),
])
def test_malformed_tsv_names_the_line(tmp_path, body, message):
    f = tmp_path / "bad.tsv"
    f.write_text(body)
    with pytest.raises(DlforgeError, match=message):
        P.read_tsv(f)


def test_bad_languages():
    with pytest.raises(DlforgeError, match="--langs: expected a comma-separated subset of pt,es,pl,it,sr,en; got xx"):
        P.parse_langs("pl,xx")
