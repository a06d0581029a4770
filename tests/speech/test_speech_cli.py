"""The speech family end to end on a tiny spoken-numbers corpus (eSpeak NG): train (the CTC loss falls),
transcribe through the command line and the handle (files and arrays in memory, greedy and beam), eval's
report (WER / CER per language, real-time factor, the alignment plot), a user manifest, bad input."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import dlforge
from dlforge.cli import main
from dlforge.data import speech as S
from dlforge.errors import DlforgeError

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                 reason="eSpeak NG is not installed (make setup installs it)")]
TINY = ["--langs", "en,pl", "--train-clips", "16", "--val-numbers", "3", "--test-numbers", "3", "--width", "32",
        "--layers", "1", "--batch-size", "8", "--lr", "3e-3", "--no-progress", "--seed", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLFORGE_CACHE", str(tmp_path_factory.mktemp("speech-cache")))
        yield


@pytest.fixture(scope="module")
def asr_run(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("runs") / "asr"
    assert main(["train", "asr-lstm-small", "--data", "spoken-numbers", *TINY, "--max-steps", "24",
                 "--eval-every", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory, cache) -> list[Path]:
    """Two test clips written as files: a 16 kHz WAV and an 8 kHz FLAC."""
    d = S.spoken_numbers(("en", "pl"), 16, 3, 3, splits=("test",))["test"]
    folder = tmp_path_factory.mktemp("audio")
    sf.write(folder / "a.wav", d.wave(0), 16000)
    sf.write(folder / "b.flac", d.wave(1)[::2], 8000)
    return [folder / "a.wav", folder / "b.flac"]


def test_training_lowers_the_ctc_loss_and_validates_with_error_rates(asr_run):
    lines = [json.loads(x) for x in (asr_run / "metrics.jsonl").read_text().splitlines()]
    lines = [x for x in lines if "val_loss" in x]  # the evaluations every 8 steps
    assert len(lines) == 3 and lines[-1]["val_loss"] < lines[0]["val_loss"] and lines[-1]["loss"] < lines[0]["loss"]
    assert {"val_cer", "val_wer"} <= lines[0].keys()
    cfg = json.loads((asr_run / "config.json").read_text())
    assert cfg["task"] == "speech" and cfg["facts"]["train_clips"] == 32
    labels = json.loads((asr_run / "labels.json").read_text())
    assert " " in labels and set("ąęśćł") & set(labels)  # Polish letters are characters of their own


def test_transcribe_cli_and_handle_agree(asr_run, clips, capsys):
    assert main(["transcribe", str(asr_run), *map(str, clips), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["transcripts"]
    assert [r["audio"] for r in out] == list(map(str, clips)) and all(isinstance(r["text"], str) for r in out)
    assert out[0]["seconds"] == pytest.approx(sf.info(clips[0]).duration, abs=1e-3)
    tr = dlforge.load(asr_run)
    wave, rate = sf.read(clips[1], dtype="float32")
    from_memory = tr.transcribe(wave, sample_rate=rate)[0]
    assert from_memory["text"] == out[1]["text"] and from_memory["audio"] == "audio 0"
    assert tr.transcribe([(wave, rate), str(clips[0])])[1]["text"] == out[0]["text"]
    beam = tr.transcribe(str(clips[0]), beam=8)[0]["text"]
    assert isinstance(beam, str)
    assert main(["transcribe", str(asr_run), str(clips[0]), "--json"]) == 0  # one file: the same shape as several
    assert json.loads(capsys.readouterr().out)["transcripts"] == out[:1]
    assert main(["transcribe", str(asr_run), str(clips[0]), "--beam", "4", "--alignment",
                 str(asr_run / "a.png")]) == 0 and (asr_run / "a.png").stat().st_size > 5000


def test_bad_audio_and_options_are_one_line_errors(asr_run, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("not a sound\n" * 20)
    assert main(["transcribe", str(asr_run), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "not a readable audio file" in err
    assert main(["transcribe", str(asr_run), str(bad), "--beam", "0"]) == 2
    tr = dlforge.load(asr_run)
    with pytest.raises(DlforgeError, match="sample rate"):
        tr.transcribe(np.zeros(16000, np.float32))
    with pytest.raises(DlforgeError, match="empty or too short"):
        tr.transcribe(np.zeros(10, np.float32), sample_rate=16000)
    with pytest.raises(DlforgeError, match="at most 60 s"):
        tr.transcribe(np.zeros(16000 * 61, np.float32), sample_rate=16000)
    with pytest.raises(DlforgeError, match="language-model run"):
        tr.transcribe(np.zeros(16000, np.float32), sample_rate=16000, lm=asr_run)


@pytest.mark.parametrize("body, says", [("{bad", "unreadable (Expecting property name"),
                                         ('["a", "b"]', "expected the run's")])
def test_a_corrupt_labels_file_is_one_line(body, says, asr_run, clips, tmp_path, capsys):
    # before: a JSONDecodeError traceback; and a list of another length was used without a word
    run = Path(shutil.copytree(asr_run, tmp_path / "run"))
    (run / "labels.json").write_text(body)
    assert main(["transcribe", str(run), str(clips[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlforge: error: {run / 'labels.json'}: {says}") and err.count("\n") == 1


def test_eval_reports_wer_and_cer_per_language_and_the_real_time_factor(asr_run, capsys):
    assert main(["eval", str(asr_run), "--json", "--beam", "4", "--limit", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["per_language"]) == {"en", "pl"} and r["test_clips"] == 4
    for v in [r, *r["per_language"].values()]:
        assert 0 <= v["cer"] and 0 <= v["wer"]
    assert 0 < r["real_time_factor"] < 5 and r["decoding"] == "beam 4"
    assert (asr_run / "alignment.png").is_file() and json.loads((asr_run / "report-limit2.json").read_text()) == r
    assert json.loads((asr_run / "report.json").read_text())["test_clips"] > 4  # the full report, kept
    assert main(["eval", str(asr_run), "--length-penalty", "1"]) == 2  # a seq2seq option


def test_a_manifest_of_recordings_trains_with_any_rate(tmp_path, clips, cache):
    rows = ["audio_path,transcript"]
    for i in range(10):
        rate = (16000, 8000, 22050)[i % 3]
        sf.write(tmp_path / f"{i}.wav", np.sin(np.arange(int(rate * 0.4)) * (0.05 + 0.01 * i)).astype(np.float32), rate)
        rows.append(f"{i}.wav,{['yes', 'no'][i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    run = dlforge.train("asr-gru-small", data=str(tmp_path / "m.csv"), out=tmp_path / "r", max_steps=3, batch_size=4,
                        width=16, layers=1, val_fraction=0.2, test_fraction=0.2, progress=False)
    assert run.report["test_clips"] == 2 and run.report["per_language"] == {} and 0 <= run.report["cer"]  # no groups
    assert json.loads((tmp_path / "r" / "labels.json").read_text()) == sorted(set("yesno"))
    # a fraction that rounds to no clip still holds one out: validation and test were a clip the model trained on
    from dlforge.recipes.transcribe import SpeechDataConfig, _manifest_splits
    train, val, test = _manifest_splits(SpeechDataConfig(data_file=str(tmp_path / "m.csv"), val_fraction=0.0,
                                                         test_fraction=0.04))
    assert (len(train.texts), len(val.texts), len(test.texts)) == (8, 1, 1)
    (tmp_path / "two.csv").write_text("audio_path,transcript\n0.wav,yes\n1.wav,no\n")
    with pytest.raises(DlforgeError, match=r"^--data-file .*two.csv: 2 clips; expected at least 3 \(one or more to "
                                           r"train on, 1 to validate, 1 to test\)$"):
        dlforge.train("asr-gru-small", data=str(tmp_path / "two.csv"), out=tmp_path / "r3", max_steps=1)
    (tmp_path / "m.csv").write_text("audio_path,transcript\n0.wav,yes\nmissing.wav,no\n")
    with pytest.raises(DlforgeError, match=r"m.csv:3: audio file 'missing.wav' not found"):
        dlforge.train("asr-gru-small", data=str(tmp_path / "m.csv"), out=tmp_path / "r2", max_steps=1)
