"""Speech recognition: clips -> log-mel features (perturbed, SpecAugment) -> asr-lstm / asr-gru -> CTC ->
report (word and character error rates per language, real-time factor); the Transcriber handle transcribes
files or audio in memory with greedy or prefix beam-search decoding, optionally fused with a character
language model run.

The run directory holds config.json, labels.json (the characters, blank first), checkpoints, metrics.jsonl,
report.json and plots (learning curves; the log-mel spectrogram of a test clip with its CTC alignment).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.data import pairs as P
from dlforge.data import speech as S
from dlforge.data.features import SpeechLoader, log_mel, pad_features
from dlforge.errors import DlforgeError
from dlforge.evaluate import ctc, plots
from dlforge.recipes.base import Handle, Recipe, is_file
from dlforge.registry import create_model
from dlforge.runs import Run, RunConfig, atomic_write_json
from dlforge.train.tasks import CTCTask
from dlforge.train.trainer import TrainConfig, check_field_types

MAX_SECONDS = 60.0       # the longest clip transcribe accepts
MAX_TRAIN_SECONDS = 30.0  # ... and a manifest may hold


@dataclass
class SpeechDataConfig:
    name: str | None = "spoken-numbers"
    data_file: str | None = None      # a manifest CSV of audio_path,transcript
    langs: tuple[str, ...] = P.LANGS
    train_clips: int = 4000           # spoken-numbers: training clips per language
    val_numbers: int = 50             # spoken-numbers: held-out validation numbers (every language)
    test_numbers: int = 100           # spoken-numbers: other held-out test numbers, spoken by held-out voices
    val_fraction: float = 0.05        # manifest: shares of the lines for validation and test
    test_fraction: float = 0.05
    split_seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)  # from Python, a str for a number was a TypeError from a comparison
        if not self.data_file and self.name != "spoken-numbers":
            raise DlforgeError(f"--data: unknown speech corpus {self.name!r}; expected spoken-numbers "
                               f"(or --data-file MANIFEST.csv)")
        self.langs = P.parse_langs(self.langs)
        for opt, ok in [("--train-clips", self.train_clips >= 1), ("--val-numbers", self.val_numbers >= 1),
                        ("--test-numbers", self.test_numbers >= 1),
                        ("--val-fraction", 0 <= self.val_fraction < 0.5),
                        ("--test-fraction", 0 <= self.test_fraction < 0.5)]:
            if not ok:
                raise DlforgeError(f"{opt}: out of range")
        if self.data_file:
            self.data_file = str(Path(self.data_file).expanduser().resolve())

    @property
    def source(self) -> str:
        return f"--data-file {self.data_file}" if self.data_file else f"--data {self.name} ({','.join(self.langs)})"


@dataclass
class Split:
    """Clips of one split: wave(i) -> float32 16 kHz, texts, groups (language), seconds."""
    wave: object
    texts: list[str]
    groups: list[str]
    seconds: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class SpeechData:
    labels: list[str]                 # label i + 1 is labels[i]; 0 is the blank
    train: Split | None
    val: Split
    test: Split
    facts: dict = field(default_factory=dict)


def _clips(c: S.Clips) -> Split:
    return Split(c.wave, c.texts, c.langs, c.lengths / S.SAMPLE_RATE)


def _manifest_splits(dc: SpeechDataConfig) -> tuple[Split, Split, Split]:
    utts = S.read_manifest(dc.data_file)
    waves = [S.read_audio(u.audio, MAX_TRAIN_SECONDS, f"{dc.data_file}:{u.line}: {u.audio}") for u in utts]
    order = list(range(len(utts)))
    random.Random(dc.split_seed).shuffle(order)
    # at least one clip each, held out: where a fraction rounded to none, validation and test were a clip the model
    # trained on (a manifest of 10 lines or fewer, or --val-fraction 0), and scored it as held out
    n_val, n_test = max(1, round(dc.val_fraction * len(utts))), max(1, round(dc.test_fraction * len(utts)))
    if len(utts) < n_val + n_test + 1:
        raise DlforgeError(f"--data-file {dc.data_file}: {len(utts)} clips; expected at least {n_val + n_test + 1} (one "
                           f"or more to train on, {n_val} to validate, {n_test} to test)")
    parts = [order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]]
    return tuple(Split(lambda i, idx=idx: waves[idx[i]], [utts[j].text for j in idx], [utts[j].lang for j in idx],
                       np.array([len(waves[j]) / S.SAMPLE_RATE for j in idx])) for idx in parts)


def prepare(dc: SpeechDataConfig, seed: int = 0, labels: list[str] | None = None, with_train: bool = True) -> SpeechData:
    """The splits and the character labels (those of every transcript, sorted, unless given)."""
    if dc.data_file:
        train, val, test = _manifest_splits(dc)
    else:
        splits = S.spoken_numbers(dc.langs, dc.train_clips, dc.val_numbers, dc.test_numbers, dc.split_seed, seed,
                                  splits=("train", "val", "test") if with_train else ("val", "test"))
        train, val, test = (_clips(splits["train"]) if with_train else None), _clips(splits["val"]), _clips(splits["test"])
    if labels is None:
        labels = sorted({c for s in (train, val, test) for t in s.texts for c in t})
    return SpeechData(labels, train, val, test)


def encode(labels: list[str], text: str) -> list[int]:
    index = {c: i + 1 for i, c in enumerate(labels)}
    return [index[c] for c in text if c in index]


def decode(labels: list[str], ids: list[int]) -> str:
    return "".join(labels[i - 1] for i in ids)


def n_mels_of(cfg: RunConfig) -> int:
    return create_model(cfg.model, **cfg.model_kwargs).n_mels


# ---------------------------------------------------------------- recognition and figures
@torch.inference_mode()
def posteriors(model, feats: list[torch.Tensor], device: torch.device, batch_size: int = 16) -> list[torch.Tensor]:
    """Features (T, n_mels) per clip -> log-posteriors (T', V + 1) per clip, in batches of similar length."""
    model.eval()
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(feats)
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        x, frames = pad_features([feats[i] for i in idx])
        logits, lengths = model(x.to(device), frames.to(device))
        lp = logits.float().log_softmax(-1).cpu()
        for j, i in enumerate(idx):
            out[i] = lp[j, :int(lengths[j])]
    return out


def decode_all(logps: list[torch.Tensor], labels: list[str], beam: int = 1, lm: ctc.CharLM | None = None,
               lm_weight: float = 0.5, lm_bonus: float = 0.0) -> list[str]:
    if beam == 1 and lm is None:
        return [decode(labels, ctc.greedy(lp)) for lp in logps]
    return [decode(labels, ctc.prefix_beam_search(lp, beam, lm, lm_weight, lm_bonus)) for lp in logps]


def error_rates(refs: list[str], hyps: list[str], groups: list[str]) -> dict:
    """Word and character error rates (jiwer: edit operations / reference words or characters) overall and
    per group, with the clips' exact-match share."""
    import jiwer
    out = {}
    names = sorted(set(groups))
    for name in ["all", *(n for n in names if n != "all")]:
        idx = [i for i, g in enumerate(groups) if name == "all" or g == name]
        r, h = [refs[i] for i in idx], [hyps[i] for i in idx]
        out[name] = {"clips": len(idx), "wer": jiwer.wer(r, h), "cer": jiwer.cer(r, h),
                     "exact_match": sum(a == b for a, b in zip(r, h)) / max(len(idx), 1)}
    return out


def _check_decoding(beam: int, lm_weight: float, lm_bonus: float) -> None:
    if not isinstance(beam, int) or not 1 <= beam <= 128:
        raise DlforgeError(f"--beam: expected 1..128, got {beam}")
    if not 0 <= lm_weight <= 5:
        raise DlforgeError(f"--lm-weight: expected 0..5, got {lm_weight}")
    if not -10 <= lm_bonus <= 10:
        raise DlforgeError(f"--lm-bonus: expected -10..10, got {lm_bonus}")


class SpeechRecipe(Recipe):
    task = "speech"
    DataConfig = SpeechDataConfig
    default_data = "spoken-numbers"
    data_options = ("data_file", "langs", "train_clips", "val_numbers", "test_numbers", "val_fraction", "test_fraction")
    model_options = {"layers": "n_layer", "width": "d_model", "dropout": "dropout", "n_mels": "n_mels"}
    train_defaults = {"batch_size": 32, "grad_clip": 5.0}
    artifacts = ("labels.json",)

    def data_config(self, model: str, data, options: dict, out: Path) -> SpeechDataConfig:
        """data: spoken-numbers or a manifest CSV (also as --data-file)."""
        if isinstance(data, (str, Path)) and is_file(data) or data is None and options.get("data_file"):
            return SpeechDataConfig(name=None, **{"data_file": str(data), **options})
        return super().data_config(model, data, options, out)

    def prepare(self, dc: SpeechDataConfig, seed: int, artifacts=None) -> SpeechData:
        return prepare(dc, seed, artifacts)

    def facts(self, data: SpeechData, dc: SpeechDataConfig) -> dict:
        return {"train_clips": len(data.train), "val_clips": len(data.val), "test_clips": len(data.test),
                "train_hours": float(data.train.seconds.sum() / 3600), "labels": len(data.labels)}

    def model_kwargs(self, data: SpeechData, dc: SpeechDataConfig, overrides: dict, task_options: dict) -> dict:
        return {"vocab_size": len(data.labels), **overrides}

    def save_artifacts(self, run: Run, data: SpeechData) -> None:
        atomic_write_json(run.path / "labels.json", data.labels)

    def load_artifacts(self, run: Run) -> list[str]:
        path = run.path / "labels.json"
        if not path.is_file():
            raise DlforgeError(f"{run.path}: labels.json is missing (the run's characters)")
        try:  # a corrupt file was a JSONDecodeError traceback, and one of another length was used without a word
            labels = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DlforgeError(f"{path}: unreadable ({e})") from None
        size = run.config.model_kwargs.get("vocab_size")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) != size:
            raise DlforgeError(f"{path}: expected the run's {size} output characters as a JSON list of strings")
        return labels

    def make_task(self, cfg: RunConfig, model: torch.nn.Module) -> CTCTask:
        return CTCTask()

    def loader(self, cfg: RunConfig, data: SpeechData, tcfg: TrainConfig, task: CTCTask) -> SpeechLoader:
        tr = data.train
        return SpeechLoader(tr.wave, [encode(data.labels, t) for t in tr.texts], tr.seconds, tcfg.batch_size,
                            n_mels_of(cfg), seed=tcfg.seed)

    def validator(self, cfg: RunConfig, data: SpeechData, task: CTCTask, tcfg: TrainConfig):
        """Validation CTC loss (no perturbation) and greedy character / word error rates."""
        n_mels = n_mels_of(cfg)
        feats = [log_mel(data.val.wave(i), n_mels) for i in range(len(data.val))]
        ys = [encode(data.labels, t) for t in data.val.texts]

        def evaluate(model: torch.nn.Module) -> dict:
            dev = next(model.parameters()).device
            lps = posteriors(model, feats, dev)
            loss = sum(-ctc.ctc_score(lp, y) if len(y) <= len(lp) else 0.0 for lp, y in zip(lps, ys))
            hyps = decode_all(lps, data.labels)
            r = error_rates(data.val.texts, hyps, data.val.groups)
            return {"loss": loss / max(sum(map(len, ys)), 1), "cer": r["all"]["cer"], "wer": r["all"]["wer"]}
        return evaluate

    def describe(self, cfg: RunConfig, data: SpeechData, loader: SpeechLoader, dc: SpeechDataConfig) -> str:
        return (f"{dc.source} ({len(data.train):,} train clips, {data.train.seconds.sum() / 3600:.1f} h; "
                f"{len(data.val):,} val clips; {len(data.labels)} characters; {len(loader)} batches of "
                f"{loader.batch_size} per epoch)")

    def after_training(self, handle: "Transcriber", data: SpeechData) -> dict:
        return handle.evaluate(quiet=False)


def _inputs(audio, sample_rate: int | None) -> list[tuple[str, np.ndarray]]:
    """Paths, arrays (with sample_rate) or (array, rate) pairs, alone or in a list -> [(name, 16 kHz wave)]."""
    if isinstance(audio, (str, Path, np.ndarray, torch.Tensor)) or (isinstance(audio, tuple) and len(audio) == 2
                                                                   and not isinstance(audio[0], (str, Path))):
        audio = [audio]
    out = []
    for k, a in enumerate(audio):
        if isinstance(a, (str, Path)):
            out.append((str(a), S.read_audio(a, MAX_SECONDS)))
            continue
        x, rate = (a if isinstance(a, tuple) else (a, sample_rate))
        if rate is None:
            raise DlforgeError(f"audio {k}: an array needs its sample rate (sample_rate=16000, or (array, rate))")
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        out.append((f"audio {k}", S.prepare_audio(x, rate, MAX_SECONDS, f"audio {k}")))
    if not out:
        raise DlforgeError("the audio to transcribe: give at least one file or array")
    return out


class Transcriber(Handle):
    """A trained speech recognizer: transcribe(audio, beam=..., lm=..., lm_weight=...), alignment_plot(...),
    evaluate()."""

    @property
    def labels(self) -> list[str]:
        return self.artifacts

    @property
    def n_mels(self) -> int:
        return self.model.n_mels

    def _lm(self, lm) -> ctc.CharLM | None:
        if lm is None:
            return None
        if isinstance(lm, ctc.CharLM):
            return lm
        from dlforge.recipes.base import recipe_for
        key = str(Path(lm.path if isinstance(lm, Handle) else lm).resolve())
        cache = self.__dict__.setdefault("_lms", {})  # each LM run is loaded once per handle (the server's case)
        if key not in cache:
            h = lm if isinstance(lm, Handle) else recipe_for("language-model").handle(lm, device="cpu")
            if h.config.task != "language-model":
                raise DlforgeError(f"--lm {h.path}: a language-model run is needed, this one is {h.config.task}")
            cache[key] = ctc.CharLM(h, self.labels)
        return cache[key]

    def recognize(self, waves: list[np.ndarray], beam: int = 1, lm=None, lm_weight: float = 0.5,
                  lm_bonus: float = 0.0) -> tuple[list[str], list[torch.Tensor]]:
        """16 kHz waves -> (texts, log-posteriors)."""
        _check_decoding(beam, lm_weight, lm_bonus)
        lps = posteriors(self.model, [log_mel(w, self.n_mels) for w in waves], self.device)
        return decode_all(lps, self.labels, beam, self._lm(lm), lm_weight, lm_bonus), lps

    def transcribe(self, audio, beam: int = 1, lm=None, lm_weight: float = 0.5, lm_bonus: float = 0.0,
                   sample_rate: int | None = None) -> list[dict]:
        """audio: file paths, float arrays (with sample_rate, any rate) or (array, rate) pairs; lm: a character
        language-model run (path or handle) for shallow fusion with weight lm_weight.
        -> [{"audio", "text", "seconds"}] for each input, in order."""
        items = _inputs(audio, sample_rate)
        texts, _ = self.recognize([w for _, w in items], beam, lm, lm_weight, lm_bonus)
        return [{"audio": name, "text": t, "seconds": round(len(w) / S.SAMPLE_RATE, 3)}
                for (name, w), t in zip(items, texts)]

    def alignment_plot(self, audio, path: str | Path, sample_rate: int | None = None,
                       reference: str | None = None) -> Path:
        """Draw the log-mel spectrogram of one clip with the frame-wise best CTC label beneath it."""
        name, wave = _inputs(audio, sample_rate)[0]
        feats = log_mel(wave, self.n_mels)
        lp = posteriors(self.model, [feats], self.device)[0]
        text = decode(self.labels, ctc.greedy(lp))
        title = f"{Path(name).name}: greedy \"{text}\"" + (f" (reference \"{reference}\")" if reference else "")
        return plots.plot_ctc_alignment(feats.numpy(), ctc.alignment(lp), ["·"] + self.labels,
                                        self.model.subsampling, title, Path(path))

    def evaluate(self, beam: int = 1, lm=None, lm_weight: float = 0.5, lm_bonus: float = 0.0,
                 limit: int | None = None, quiet: bool = True, split: str = "test") -> dict:
        """Word and character error rates per language on the test clips (spoken-numbers: held-out numbers
        spoken by held-out voices; split="val": the validation clips, to tune decoding on), the real-time
        factor (processing seconds per second of audio: features, network and decoding), report.json, plots."""
        _check_decoding(beam, lm_weight, lm_bonus)
        if split not in ("test", "val"):
            raise DlforgeError(f"split: expected test or val, got {split!r}")
        self.check_current()
        dc = SpeechDataConfig(**self.config.data)
        data = prepare(dc, self.config.facts.get("data_seed", 0), self.labels, with_train=False)
        test = data.test if split == "test" else data.val
        idx = list(range(len(test)))
        if limit is not None:
            if limit < 1:
                raise DlforgeError(f"--limit: expected at least 1, got {limit}")
            kept, seen = [], {}
            for i in idx:  # the first `limit` clips of each language
                seen[test.groups[i]] = seen.get(test.groups[i], 0) + 1
                if seen[test.groups[i]] <= limit:
                    kept.append(i)
            idx = kept
        waves = [test.wave(i) for i in idx]
        lm_ = self._lm(lm)
        t0 = time.perf_counter()
        hyps, _ = self.recognize(waves, beam, lm_, lm_weight, lm_bonus)
        seconds = time.perf_counter() - t0
        refs, groups = [test.texts[i] for i in idx], [test.groups[i] for i in idx]
        audio_s = float(sum(len(w) for w in waves) / S.SAMPLE_RATE)
        per = error_rates(refs, hyps, groups)
        decoding = "greedy" if beam == 1 and lm_ is None else f"beam {beam}" + (
            f" + char LM (weight {lm_weight}, bonus {lm_bonus})" if lm_ is not None else "")
        report = {"run": str(self.path), "checkpoint": str(self.checkpoint), "data": dc.source, "decoding": decoding,
                  "split": split, "test_clips": len(idx), "audio_seconds": audio_s, "wer": per["all"]["wer"], "cer": per["all"]["cer"],
                  "real_time_factor": seconds / max(audio_s, 1e-9), "threads": torch.get_num_threads(),
                  "per_language": {g: v for g, v in per.items() if g != "all"},
                  "examples": [{"reference": r, "output": h, "language": g} for r, h, g in
                               list(zip(refs, hyps, groups))[:: max(1, len(idx) // 12)][:12]]}
        path = self.report_path(limit=limit, split=split)
        atomic_write_json(path, report)
        written = []
        records = self.run.metrics()
        if records and plots.plot_lm_curves(records, self.path / "learning_curves.png", "CTC loss (nats / char)"):
            written.append("learning_curves.png")
        if waves:
            self.alignment_plot((waves[0], S.SAMPLE_RATE), self.path / "alignment.png", reference=refs[0])
            written.append("alignment.png")
        if not quiet:
            print(f"\n{decoding} on {len(idx):,} test clips ({audio_s / 60:.1f} min): WER = {100 * report['wer']:.2f}% | "
                  f"CER = {100 * report['cer']:.2f}% | real-time factor {report['real_time_factor']:.4f} "
                  f"({torch.get_num_threads()} threads)")
            for g, v in report["per_language"].items():
                print(f"  {g:<6} WER {100 * v['wer']:6.2f}%   CER {100 * v['cer']:5.2f}%   ({v['clips']} clips)")
            print(f"report: {path}" + (f"; plots: {', '.join(written)}" if written else ""))
        return report


RECIPE = SpeechRecipe()
SpeechRecipe.handle = Transcriber
