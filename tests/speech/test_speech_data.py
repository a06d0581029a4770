"""Speech data: log-mel features (deterministic; librosa's where it is installed), perturbations seeded per
(seed, epoch, batch), bad audio and bad manifests as one-line errors naming the file or the line, and the
spoken-numbers corpus's held-out numbers and voices."""
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from dlforge.data import features as Fe
from dlforge.data import speech as S
from dlforge.errors import DlforgeError


def _tone(seconds=0.5, rate=16000, f=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.05 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def test_log_mel_is_deterministic_and_normalised():
    w = _tone()
    a, b = Fe.log_mel(w, 80), Fe.log_mel(w.copy(), 80)
    assert torch.equal(a, b) and a.shape == (1 + len(w) // Fe.HOP, 80)
    assert a.mean(0).abs().max() < 1e-4 and (a.std(0, unbiased=False) - 1).abs().max() < 1e-2


def test_mel_filterbank_and_power_match_librosa():
    librosa = pytest.importorskip("librosa", reason="librosa is not installed (pip install librosa)")
    ours = Fe.mel_filterbank(40).numpy()
    theirs = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    w = _tone(0.3)
    ref = librosa.feature.melspectrogram(y=w, sr=16000, n_fft=400, hop_length=160, n_mels=40, center=True,
                                         pad_mode="constant", power=2.0)
    got = Fe.mel_power(torch.from_numpy(w), 40).numpy()
    np.testing.assert_allclose(np.log(got + 1e-6), np.log(ref + 1e-6), atol=1e-3)


def test_training_batches_are_seeded_per_epoch_and_batch():
    waves = [_tone(0.3 + 0.05 * i, f=300 + 40 * i) for i in range(12)]
    labels = [[1, 2, 3]] * 12
    make = lambda: Fe.SpeechLoader(waves.__getitem__, labels, np.array([len(w) for w in waves]), 4, 40, seed=5)  # noqa: E731
    a, b = list(make().epoch(1)), list(make().epoch(1, start=1))  # a resumed epoch starts mid-way
    for x, y in zip(a[1:], b):
        assert all(torch.equal(s, t) for s, t in zip(x, y))
    c = list(make().epoch(2))
    assert any(x[0].shape != y[0].shape or not torch.equal(x[0], y[0]) for x, y in zip(a, c))  # another epoch
    clean = Fe.log_mel(waves[0], 40)
    assert not torch.equal(Fe.augmented_features(waves[0], 40, torch.Generator().manual_seed(0)), clean)


def test_speed_perturbation_and_spec_augment():
    w = torch.from_numpy(_tone(1.0))
    assert len(Fe.speed_perturb(w, 1.1)) == round(16000 / 1.1) and len(Fe.speed_perturb(w, 0.9)) == round(16000 / 0.9)
    x = torch.randn(200, 40)
    m = Fe.spec_augment(x, torch.Generator().manual_seed(3), freq_width=10)
    masked_bands = (m == 0).all(0).sum()
    assert 0 < masked_bands <= 20 and m.shape == x.shape
    noisy = Fe.add_noise(w, 10.0, False, torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(w.pow(2).mean() / (noisy - w).pow(2).mean())
    assert abs(float(snr) - 10) < 0.5


def test_any_rate_is_resampled_to_16k(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(0.5, 8000), 8000)
    sf.write(tmp_path / "b.flac", np.stack([_tone(0.5, 22050)] * 2, 1), 22050)
    assert len(S.read_audio(tmp_path / "a.wav")) == 8000 and len(S.read_audio(tmp_path / "b.flac")) == 8000


@pytest.mark.parametrize("case", ["empty", "zero frames", "truncated", "not audio", "too long", "missing"])
def test_bad_audio_is_one_line_naming_the_file(tmp_path, case):
    p = tmp_path / f"{case.replace(' ', '_')}.wav"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "zero frames":
        sf.write(p, np.zeros(0, np.float32), 16000)
    elif case == "truncated":
        sf.write(p, _tone(1.0), 16000, subtype="PCM_16")
        p.write_bytes(p.read_bytes()[:44 + 8000])  # the header promises 16,000 frames, 4,000 are left
    elif case == "not audio":
        p.write_text("hello, I am text\n" * 50)
    elif case == "too long":
        sf.write(p, np.zeros(8000 * 70, np.float32), 8000)
    with pytest.raises(DlforgeError) as e:
        S.read_audio(p, max_seconds=60)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    assert {"empty": "empty", "zero frames": "empty", "truncated": "truncated audio file", "not audio": "not a readable audio",
            "too long": "at most 60 s", "missing": "no such"}[case] in msg


def test_a_wav_written_to_a_pipe_is_read_whole(tmp_path):
    """espeak-ng --stdout (and ffmpeg to a pipe) cannot know the length and write ~2 GiB (0x7ffff024) or 4 GiB
    (0xffffffff) as the RIFF and data sizes: those were refused as 'truncated'. A folder was 'no such audio file'."""
    sf.write(tmp_path / "a.wav", _tone(0.5), 16000, subtype="PCM_16")
    raw = bytearray((tmp_path / "a.wav").read_bytes())
    want = S.read_audio(tmp_path / "a.wav")
    data_at = raw.index(b"data") + 4
    for riff, data in ((0x7FFFF024, 0x7FFFF000), (0xFFFFFFFF, 0xFFFFFFFF)):
        raw[4:8], raw[data_at:data_at + 4] = riff.to_bytes(4, "little"), data.to_bytes(4, "little")
        (tmp_path / "piped.wav").write_bytes(raw)
        assert np.array_equal(S.read_audio(tmp_path / "piped.wav"), want)
    with pytest.raises(DlforgeError, match=f"^{tmp_path}: a folder, not an audio file$"):
        S.read_audio(tmp_path)


def test_manifest_errors_name_the_line(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(), 16000)
    good = tmp_path / "m.csv"
    good.write_text('audio_path,transcript\na.wav,"One, Two-Three"\n\na.wav,four,en\n')
    utts = S.read_manifest(good)
    assert [(u.text, u.lang, u.line) for u in utts] == [("one two three", "all", 2), ("four", "en", 4)]
    bom = tmp_path / "excel.csv"  # Excel's "CSV UTF-8" starts with a byte-order mark: it was read into the header
    bom.write_bytes("\ufeffaudio_path,transcript\na.wav,five\n".encode("utf-8"))
    assert [u.text for u in S.read_manifest(bom)] == ["five"]
    for body, line, what in [("a.wav,one\nb.wav,two\n", 2, "not found"), ("a.wav,one\na.wav\n", 2, "2 columns"),
                             ("a.wav,one\na.wav,one\na.wav,?!\n", 3, "empty transcript")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(DlforgeError, match=f"{bad}:{line}: .*{what}"):
            S.read_manifest(bad)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="eSpeak NG is not installed (make setup installs it)")
def test_spoken_numbers_hold_out_numbers_and_voices():
    d = S.spoken_numbers(("en", "pl"), 12, 3, 4)
    tr, val, test = d["train"], d["val"], d["test"]
    assert (len(tr), len(val), len(test)) == (24, 6, 8)
    assert not set(tr.texts) & set(test.texts) and not set(tr.texts) & set(val.texts)
    variant = lambda v: v.split("+")[1]  # noqa: E731
    assert {variant(v) for v in test.voices} <= set(S.TEST_VARIANTS)
    assert not {variant(v) for v in tr.voices + val.voices} & set(S.TEST_VARIANTS)
    assert set(test.langs) == {"en", "pl"} and 0.3 < tr.lengths.min() / 16000 and tr.wave(0).dtype == np.float32
    again = S.spoken_numbers(("en", "pl"), 12, 3, 4)  # from the cache: the same clips
    assert again["test"].texts == test.texts and np.array_equal(again["test"].audio, test.audio)


def test_audio_in_memory_takes_channels_on_either_side():
    # torchaudio.load gives (channels, samples): (1, 16000) was read as 16,000 channels of one sample, "too short
    # audio (1 samples)"; soundfile gives (samples, channels)
    import torch
    a = (np.sin(np.arange(16000) * 0.05) * 0.1).astype(np.float32)
    mono = S.prepare_audio(a, 16000)
    for x in (a[None], a[:, None], np.stack([a, a]), np.stack([a, a], 1), torch.from_numpy(a)[None]):
        assert np.allclose(S.prepare_audio(x, 16000), mono)
