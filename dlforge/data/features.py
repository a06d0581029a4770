"""Audio -> log-mel features, the training-time perturbations, and the batches of an ASR run.

log-mel: |STFT|² (25 ms Hann window, 10 ms hop, centred, zero padded) through a Slaney mel filterbank
(the one librosa.filters.mel makes by default; checked against librosa in tests), log(· + 1e-6), then each
mel band normalised over the utterance (zero mean, unit variance: the loudness and the channel drop out).

Perturbations (training only), each drawn from a generator seeded with (seed, epoch, batch index) so that a
resumed run sees exactly the batches an uninterrupted one would:
  speed  — resample by a factor in [0.9, 1.1] (tempo and pitch together, as Ko et al., 2015);
  noise  — white or brown noise at an SNR drawn from 10..40 dB;
  SpecAugment (Park et al., 2019) — 2 frequency masks of up to 15 bands, time masks of up to 5% each.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dlforge.data.loader import _seeded, length_batches

SAMPLE_RATE, N_FFT, HOP = 16_000, 400, 160


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep,
                       f / f_sp)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sr: int = SAMPLE_RATE, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised ('slaney'), as librosa.filters.mel.
    Hand-written (torchaudio is not a dependency): a dozen lines of standard formulas."""
    fmax = fmax or sr / 2
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_f = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(fmin))), float(hz_to_mel(torch.tensor(fmax))),
                                     n_mels + 2, dtype=torch.float64))
    fdiff = mel_f.diff()
    ramps = mel_f[:, None] - freqs[None, :]                              # (n_mels + 2, F)
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    return (weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]).float()


_BANKS: dict[int, torch.Tensor] = {}


def mel_power(wave: torch.Tensor, n_mels: int) -> torch.Tensor:
    """wave (N,) float -> mel power spectrogram (n_mels, 1 + N // HOP)."""
    if n_mels not in _BANKS:
        _BANKS[n_mels] = mel_filterbank(n_mels)
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="constant",
                      return_complex=True).abs().pow(2)                 # (F, frames)
    return _BANKS[n_mels] @ spec


def log_mel(wave: torch.Tensor | np.ndarray, n_mels: int = 80) -> torch.Tensor:
    """16 kHz audio (N,) -> normalised log-mel features (frames, n_mels)."""
    wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    x = torch.log(mel_power(wave, n_mels) + 1e-6).T                    # (T, n_mels)
    return (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5)


# ---------------------------------------------------------------- perturbations
def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Play `factor` times faster: linear-interpolation resampling to len / factor samples."""
    if abs(factor - 1) < 1e-6:
        return wave
    n = max(2, int(round(len(wave) / factor)))
    return F.interpolate(wave[None, None], size=n, mode="linear", align_corners=True)[0, 0]


def add_noise(wave: torch.Tensor, snr_db: float, brown: bool, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(len(wave), generator=gen)
    if brown:  # integrated white noise, its mean removed: energy falls 6 dB per octave
        noise = noise.cumsum(0)
        noise = noise - torch.linspace(float(noise[0]), float(noise[-1]), len(noise))
    p_signal, p_noise = wave.pow(2).mean().clamp(min=1e-8), noise.pow(2).mean().clamp(min=1e-8)
    return wave + noise * torch.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))


def spec_augment(x: torch.Tensor, gen: torch.Generator, freq_masks: int = 2, freq_width: int = 15,
                 time_masks: int = 2, time_share: float = 0.05) -> torch.Tensor:
    """x (T, n_mels) with bands and spans of frames set to 0 (the normalised mean)."""
    x = x.clone()
    T, M = x.shape
    for _ in range(freq_masks):
        w = int(torch.randint(0, freq_width + 1, (1,), generator=gen))
        f0 = int(torch.randint(0, max(1, M - w), (1,), generator=gen))
        x[:, f0:f0 + w] = 0
    for _ in range(time_masks):
        w = int(torch.randint(0, max(1, int(time_share * T)) + 1, (1,), generator=gen))
        t0 = int(torch.randint(0, max(1, T - w), (1,), generator=gen))
        x[t0:t0 + w] = 0
    return x


def augmented_features(wave: np.ndarray, n_mels: int, gen: torch.Generator, spec: bool = True,
                       perturb: bool = True) -> torch.Tensor:
    """One training clip: speed, noise (90% of clips), log-mel, SpecAugment."""
    w = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if perturb:
        w = speed_perturb(w, 0.9 + 0.2 * float(torch.rand((), generator=gen)))
        if float(torch.rand((), generator=gen)) < 0.9:
            w = add_noise(w, 10 + 30 * float(torch.rand((), generator=gen)),
                          bool(torch.rand((), generator=gen) < 0.5), gen)
    x = log_mel(w, n_mels)
    return spec_augment(x, gen) if spec else x


# ---------------------------------------------------------------- batches
def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (B, T_max, n_mels) zero padded, lengths (B,)."""
    lengths = torch.tensor([len(f) for f in feats])
    out = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, :len(f)] = f
    return out, lengths


def pad_labels(labels: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(y) for y in labels])
    out = torch.zeros(len(labels), max(1, int(lengths.max())), dtype=torch.long)
    for i, y in enumerate(labels):
        out[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    return out, lengths


class SpeechLoader:
    """Batches (features (B, T, n_mels), frames (B,), labels (B, L), label lengths (B,)) of clips of similar
    length. Epoch 0 runs from the shortest clips to the longest (SortaGrad: CTC leaves its all-blank start
    sooner on short clips); epoch e > 0 shuffles the clips with a generator seeded (seed, e), sorts runs of 32 batches by length,
    cuts them into batches of `batch_size` clips and shuffles the batches; batch i is augmented with a
    generator seeded (seed, e, i). Features are computed when a batch is needed (the corpus stays audio)."""

    def __init__(self, waves, labels: list[list[int]], lengths: np.ndarray, batch_size: int, n_mels: int,
                 seed: int = 0, augment: bool = True, sortagrad: bool = True):
        self.waves, self.labels, self.lengths = waves, labels, torch.as_tensor(np.asarray(lengths))
        self.sortagrad = sortagrad
        self.batch_size, self.n_mels, self.seed, self.augment = batch_size, n_mels, seed, augment

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def order(self, epoch: int) -> list[torch.Tensor]:
        perm = torch.randperm(len(self.labels), generator=_seeded(self.seed, epoch))
        if epoch == 0 and self.sortagrad:  # SortaGrad (Amodei et al., 2016): the first epoch shortest first
            return list(perm[self.lengths[perm].argsort(stable=True)].split(self.batch_size))
        return length_batches(perm, self.lengths, self.batch_size, 32, _seeded(self.seed, epoch, 2))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        batches = self.order(epoch)
        for i in range(start, len(batches)):
            gen = _seeded(self.seed, epoch, i, 1)
            idx = batches[i].tolist()
            feats = [augmented_features(self.waves(j), self.n_mels, gen, self.augment, self.augment) for j in idx]
            x, frames = pad_features(feats)
            y, y_len = pad_labels([self.labels[j] for j in idx])
            yield x, frames, y, y_len

    def __iter__(self):
        return self.epoch(0)
