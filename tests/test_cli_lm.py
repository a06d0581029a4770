"""Language models end to end through the command line, on a small seeded text (and tinyshakespeare
when ../shared holds it): train, resume, generate, next, eval, bad input."""
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from dlforge.cli import main
from dlforge.train.checkpoint import load_checkpoint

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
FAST = ["--no-progress", "--batch-size", "16", "--block-size", "32", "--eval-every", "10", "--eval-tokens", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _text(n: int = 300, seed: int = 0) -> str:
    """Lines a small model learns quickly; 'the cat sat on the' is always followed by ' mat'."""
    rng = random.Random(seed)
    lines = ["the cat sat on the mat.", "the dog ran to the park.", "a bird sang in the tree.",
             "the old man read a book.", "my friend ate the red apple."]
    return "".join(f"{rng.choice(['ANNA', 'BEN'])}:\n{rng.choice(lines)}\n\n" for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "lines.txt"
    p.write_text(_text())
    return p


def _val_losses(run: Path) -> list[float]:
    return [json.loads(x)["val_loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]


@pytest.fixture(scope="module")
def gpt_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "gpt"
    assert main(["train", "gpt-tiny", "--data-file", str(corpus), *FAST, "--max-steps", "60", "--lr", "3e-3",
                 "--lr-schedule", "cosine", "--warmup-steps", "5", "--out", str(out)]) == 0
    return out


def test_language_models_decay_weights_as_adamw_unless_told(gpt_run, corpus, tmp_path):
    """New runs train with AdamW (decoupled weight decay, as nanoGPT); --optimizer adam still wins."""
    assert json.loads((gpt_run / "config.json").read_text())["train"]["optimizer"] == "adamw"
    out = tmp_path / "adam"
    assert main(["train", "gpt-tiny", "--data-file", str(corpus), *FAST, "--max-steps", "2", "--optimizer", "adam",
                 "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["optimizer"] == "adam"


@pytest.mark.parametrize("model, lr", [("lstm-small", "1e-2"), ("gru-small", "1e-2"), ("rnn-small", "3e-3")])
def test_recurrent_families_learn(model, lr, corpus, tmp_path):
    out = tmp_path / model
    assert main(["train", model, "--data-file", str(corpus), *FAST, "--max-steps", "40", "--lr", lr,
                 "--out", str(out)]) == 0
    losses = _val_losses(out)
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0] and losses[-1] < 0.75 * math.log(24)


def test_gpt_learns_and_leaves_a_complete_run(gpt_run):
    losses = _val_losses(gpt_run)
    assert losses[-1] < 0.7 * losses[0]
    report = json.loads((gpt_run / "report.json").read_text())
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["bpc"] == pytest.approx(report["loss"] / math.log(2))  # char tokenizer: one token per character
    for f in ("tokenizer.json", "learning_curves.png", "attention.png", "checkpoints/best.safetensors"):
        assert (gpt_run / f).is_file(), f


def test_generate_next_eval_from_the_run_directory_alone(gpt_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["generate", str(gpt_run), "--prompt", "ANNA:", "--max-new-tokens", "25", "--seed", "3"]  # within 32
    assert main(args) == 0
    text = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == text  # seeded
    assert text.startswith("ANNA:") and len(text) >= 30
    assert main(args + ["--stream"]) == 0
    assert capsys.readouterr().out == text  # streamed text is the same text
    assert main(args + ["--no-cache"]) == 0
    assert capsys.readouterr().out == text  # the KV cache changes nothing inside the context
    assert main(["next", str(gpt_run), "the cat sat on th", "--top-k", "5", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["next"]
    probs = [t["probability"] for t in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert main(["eval", str(gpt_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"loss", "perplexity", "bpc", "accuracy"} <= set(report) and report["loss"] < 2.5


def test_word_tokenizer_predicts_the_next_word(corpus, tmp_path, capsys):
    out = tmp_path / "word"
    assert main(["train", "gpt-tiny", "--data-file", str(corpus), "--tokenizer", "word", "--no-progress",
                 "--batch-size", "16", "--block-size", "16", "--max-steps", "100", "--lr", "5e-3", "--out", str(out)]) == 0  # 60 steps: 3 seeds of 4
    capsys.readouterr()
    assert main(["next", str(out), "the cat sat on the", "--top-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["next"][0]["token"] == " mat"


def test_word_vocab_size_caps_the_vocabulary(corpus, tmp_path, capsys, reliability):
    """The corpus has 31 distinct word pieces; --vocab-size 20 keeps 18 and the two <unk>s."""
    out = tmp_path / "capped"
    assert main(["train", "lstm-small", "--data-file", str(corpus), "--tokenizer", "word", "--vocab-size", "20",
                 *FAST, "--max-steps", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "word tokenizer: the 18 most frequent of 31 distinct words; the other 13" in err
    assert "(word tokenizer, 20 tokens;" in err  # the banner
    assert json.loads((out / "config.json").read_text())["model"]["kwargs"]["vocab_size"] == 20
    assert main(["next", str(out), "the zebra sat on the", "--json"]) == 0  # an unseen word: <unk>, not an error
    reliability.record("word tokenizer on a corpus with more distinct words than `--vocab-size`",
                       "capped; the rest become <unk>, and stderr says how many")


def test_bpe_tokenizer_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "bpe"
    assert main(["train", "gru-small", "--data-file", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300",
                 *FAST, "--max-steps", "10", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["kwargs"]["vocab_size"] <= 300
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Ωmega", "--max-new-tokens", "5"]) == 0  # bytes: never unknown
    assert capsys.readouterr().out.startswith("Ωmega")


@pytest.mark.parametrize("model", ["gpt-tiny", "lstm-small"])
def test_resume_equals_uninterrupted(model, corpus, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text(_text(100))  # 5 batches an epoch: the runs cross epoch boundaries
    base = ["train", model, "--data-file", str(small), *FAST, "--lr", "3e-3", "--lr-schedule", "cosine",
            "--warmup-steps", "5", "--decay-steps", "30", "--dropout", "0.1", "--epochs", "100"]
    assert main(base + ["--max-steps", "30", "--out", str(tmp_path / "whole")]) == 0
    assert main(base + ["--max-steps", "20", "--out", str(tmp_path / "part")]) == 0
    assert main(base + ["--max-steps", "30", "--out", str(tmp_path / "part"), "--resume"]) == 0
    a, meta_a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.safetensors")
    b, meta_b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert meta_a["step"] == meta_b["step"] == 30 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "tokens_per_s")}  # noqa: E731
    ra, rb = ([strip(json.loads(x)) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("whole", "part"))
    assert ra == rb


def test_a_recurrent_models_validation_subset_spans_the_whole_text(corpus, tmp_path):
    """--eval-tokens N on an LSTM: up to 64 contiguous rows spread from the start to the end of the validation
    text, the state carried along each row (on tinyshakespeare its first tokens scored 0.07 below the whole);
    a run made before the change keeps reading the first N tokens, so its best checkpoint stays comparable."""
    from dlforge.recipes.language_model import TextDataConfig, _eval_batches
    lstm, ids, T, n = type("M", (), {"recurrent": True})(), torch.arange(10_001), 16, 2048
    batches = list(_eval_batches(lstm, ids, T, n, 32768))
    x, y = (torch.cat([b[k] for b in batches], 1) for k in (0, 1))
    assert x.shape == (64, 32) and torch.equal(y, x + 1) and [b[2] for b in batches] == [0, 1]
    assert torch.equal(x, x[:, :1] + torch.arange(32))                  # each row contiguous across its chunks
    assert x[0, 0] == 0 and y[-1, -1] == 10_000 and (x[1:, 0] > x[:-1, -1]).all()   # start to end, no overlap
    first = torch.cat([b[0] for b in _eval_batches(lstm, ids, T, n, 32768, spread=False)], 1)
    assert first.max() < n + 1 and first.numel() == n
    out = tmp_path / "lstm"
    assert main(["train", "lstm-small", "--data-file", str(corpus), *FAST, "--max-steps", "1", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["eval_spread"] is True
    assert TextDataConfig(name="tinyshakespeare").eval_spread is False  # a config saved before the field


def test_named_corpus_tinyshakespeare(tmp_path, capsys):
    if not SHAKESPEARE.is_file():
        pytest.skip(f"the local tinyshakespeare copy is not at {SHAKESPEARE} (../shared is absent)")
    from dlforge.data.text import corpus_path
    corpus_path("tinyshakespeare").parent.mkdir(parents=True, exist_ok=True)
    corpus_path("tinyshakespeare").write_bytes(SHAKESPEARE.read_bytes())  # verified by checksum, not fetched
    out = tmp_path / "ts"
    assert main(["train", "gpt-tiny", "--data", "tinyshakespeare", "--no-progress", "--batch-size", "8",
                 "--max-steps", "3", "--eval-tokens", "2048", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["kwargs"]["vocab_size"] == 65 and cfg["facts"]["val_tokens"] == 111539
    assert report["val_tokens"] > 100000 and report["loss"] < math.log(65) + 0.5


@pytest.mark.parametrize("setup, argv, message", [
    (lambda d: (d / "e.txt").write_text(""), ["train", "gpt-tiny", "--data-file", "e.txt"], "e.txt: the file is empty"),
    (lambda d: (d / "l.txt").write_bytes(b"caf\xe9 au lait"), ["train", "lstm", "--data-file", "l.txt"],
     "l.txt: not UTF-8 text"),
    (lambda d: (d / "s.txt").write_text("too short\n" * 5), ["train", "gpt-tiny", "--data-file", "s.txt"],
     "less than one context window (--block-size 64 + 1)"),
    (None, ["train", "gpt-tiny", "--data", "wikipedia"], "--data: unknown text corpus 'wikipedia'"),
    (None, ["train", "gpt-tiny", "--tokenizer", "sentencepiece"], "--tokenizer: expected one of char, word, bpe"),
    (None, ["train", "lstm", "--heads", "4", "--data-file", "x.txt"], "--heads: does not apply to lstm"),
    (None, ["train", "lstm", "--data-file", "x.txt", "--batch-size", "64"], "--batch-size 64: 2,887 training tokens make fewer than 64 streams"),
    # contradictions, where one option silently won (the file; the char vocabulary)
    (None, ["train", "gpt-tiny", "--data", "tinyshakespeare", "--data-file", "x.txt"],
     "--data-file x.txt: --data tinyshakespeare was given too; give the data once"),
    (None, ["data", "prepare", "--data", "tinyshakespeare", "--data-file", "x.txt"], "--data tinyshakespeare was given"),
    (None, ["train", "gpt-tiny", "--data-file", "x.txt", "--vocab-size", "300"],
     "--vocab-size 300: sizes the bpe and word tokenizers; the char tokenizer (the default here) takes every"),
    (None, ["data", "prepare", "--data-file", "x.txt", "--vocab-size", "300"], "--vocab-size 300: sizes the bpe"),
    (None, ["train", "transformer-tiny", "--tokenizer", "char", "--vocab-size", "300"],
     "--vocab-size 300: sizes the bpe and word tokenizers; the char tokenizer takes every character of the text"),
])
def test_bad_input_is_one_line_and_exit_2(setup, argv, message, corpus, tmp_path, monkeypatch, capsys, reliability):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text(_text(100))
    if setup:
        setup(tmp_path)
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made
    reliability.record("bad text or options for language models (empty, not UTF-8, too short, unknown names)",
                       "one line on stderr, exit code 2")


@pytest.mark.parametrize("argv, message", [
    (["generate", "{run}", "--prompt", "Ω"], "--prompt: the text has characters the char tokenizer never saw: 'Ω'"),
    (["generate", "{run}", "--prompt", ""], "--prompt: the text is empty"),
    (["generate", "{run}", "--top-p", "1.5"], "--top-p: expected a probability in (0, 1], got 1.5"),
    (["generate", "{run}", "--temperature", "inf"], "--temperature: expected 0 (greedy) or more, finite, got inf"),
    (["next", "{run}", ""], "text: the text is empty"),
    (["generate", "/nonexistent/run"], "not a dlforge run directory"),
])
def test_bad_generation_input(argv, message, gpt_run, capsys):
    assert main([a.replace("{run}", str(gpt_run)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_long_prompt_is_cropped_to_the_context(gpt_run, capsys):
    prompt = "ANNA:\nthe cat sat on the mat.\n\n" * 10  # 310 characters, context 32
    assert main(["next", str(gpt_run), prompt, "--json"]) == 0
    assert main(["generate", str(gpt_run), "--prompt", prompt, "--max-new-tokens", "80"]) == 0


def test_generate_without_a_prompt_on_a_text_without_newlines_starts_from_a_space(tmp_path, capsys):
    # before: "--prompt: the text has characters the char tokenizer never saw: '\n'", for a prompt not given
    text = tmp_path / "cat.txt"
    text.write_text("the cat sat on the mat. " * 100)
    run = tmp_path / "lm"
    assert main(["train", "gpt-tiny", "--data-file", str(text), "--max-steps", "3", *FAST, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--max-new-tokens", "10", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(" ") and len(out.rstrip("\n")) == 11 and set(out.rstrip("\n")) <= set("the catsonm.")


def test_an_epochs_evaluation_prints_perplexity_and_bits_per_character(corpus, tmp_path, capsys):
    # before: "[Epoch 1] loss = … | val_loss = …" alone, though the README says each evaluation prints all three
    assert main(["train", "gpt-tiny", "--data-file", str(corpus), "--no-progress", "--batch-size", "16",
                 "--block-size", "32", "--epochs", "1", "--eval-tokens", "0", "--out", str(tmp_path / "e")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[Epoch 1]"))
    assert re.fullmatch(r"\[Epoch 1\] loss = [\d.]+ \| accuracy = [\d.]+% \| val_loss = [\d.]+ \| val_accuracy = "
                        r"[\d.]+% \| val_perplexity = [\d.]+ \| val_bpc = [\d.]+", line), line


def test_a_runs_text_changed_since_is_named_when_its_characters_are_new(tmp_path, capsys):
    # before: "the text has characters the char tokenizer never saw: 'Ø'", naming no file
    text = tmp_path / "t.txt"
    text.write_text(_text(100))
    assert main(["train", "gpt-tiny", "--data-file", str(text), *FAST, "--max-steps", "2", "--out",
                 str(tmp_path / "r")]) == 0
    text.write_text(_text(100) + "Ø\n")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (f"dlforge: error: --data-file {text}: the text has characters the char "
                                       f"tokenizer never saw: 'Ø'; the run's tokenizer was made from the text as it "
                                       f"was\n")


def test_resume_on_a_text_file_that_changed_is_refused(tmp_path, capsys):
    """The run records its text's sha256; before, --resume read the changed file without a word."""
    text = tmp_path / "t.txt"
    text.write_text(_text(100))
    run = tmp_path / "r"
    assert main(["train", "gpt-tiny", "--data-file", str(text), *FAST, "--max-steps", "3", "--out", str(run)]) == 0
    capsys.readouterr()
    text.write_text(_text(100, seed=1))  # other lines, the same characters
    config = (run / "config.json").read_bytes()
    assert main(["train", "gpt-tiny", "--out", str(run), "--resume", "--max-steps", "6", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dlforge: error: --resume {run}: {text} has changed since the run began (its sha256 differs); "
        f"a resumed run reads the same data: restore it, or train a new run"]
    assert (run / "config.json").read_bytes() == config
