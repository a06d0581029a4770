"""Sequence to sequence: parallel pairs -> tokenizer(s) -> padded tensors -> encoder–decoder -> report (exact
match, character error rate, BLEU for user corpora); the Translator handle translates with greedy or beam
search decoding and draws the cross-attention.

The run directory holds config.json, src_tokenizer.json / tgt_tokenizer.json (one file twice when the
vocabulary is shared), checkpoints/{best,last}.safetensors, metrics.jsonl, report.json and plots. Pairs
given in memory are kept in the run directory (pairs.tsv).
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from dlforge.data import pairs as P
from dlforge.data.loader import BatchLoader
from dlforge.data.text import TOKENIZERS, TextTokenizer, fit_tokenizer
from dlforge.errors import DlforgeError
from dlforge.evaluate import plots
from dlforge.recipes.base import Handle, Recipe, flag, is_file
from dlforge.runs import Run, RunConfig, atomic_write_json
from dlforge.train.distributed import from_env
from dlforge.train.tasks import Seq2SeqTask
from dlforge.train.trainer import TrainConfig, autocast, check_field_types, is_int, is_number

TASK = "seq2seq"


@dataclass
class PairDataConfig:
    name: str | None = "numbers"
    data_file: str | None = None
    langs: tuple[str, ...] = P.LANGS
    tokenizer: str = "bpe"
    vocab_size: int = 1000            # bpe only
    separate_vocab: bool = False      # one tokenizer (and one embedding) for both sides, or one each
    train_pairs: int = 40000          # numbers: training pairs per language and direction
    val_numbers: int = 100            # numbers: validation numbers (every language and direction)
    test_numbers: int = 5000          # numbers: held-out test numbers
    val_fraction: float = 0.05        # TSV: shares of the lines for validation and test
    test_fraction: float = 0.05
    max_len: int = 128                # the model's longest sequence, in tokens
    split_seed: int = 0               # the fixed train/validation/test split (independent of --seed)

    def __post_init__(self) -> None:
        check_field_types(self)  # from Python, a str for a number was a TypeError from a comparison
        if self.tokenizer not in TOKENIZERS:
            raise DlforgeError(f"--tokenizer: expected one of {', '.join(TOKENIZERS)}; got {self.tokenizer!r}")
        if not self.data_file and self.name != "numbers":
            raise DlforgeError(f"--data: unknown parallel corpus {self.name!r}; expected numbers "
                               f"(or --data-file PAIRS.tsv)")
        self.langs = P.parse_langs(self.langs)
        held = self.val_numbers + self.test_numbers
        checks = [("--train-pairs", self.train_pairs >= 1, "at least 1", self.train_pairs),
                  ("--val-numbers", self.val_numbers >= 1, "at least 1", self.val_numbers),
                  ("--test-numbers", self.test_numbers >= 1, "at least 1", self.test_numbers),
                  ("--max-len", self.max_len >= 4, "at least 4 tokens", self.max_len),
                  ("--val-numbers + --test-numbers", held < P.MAX_NUMBER // 2,
                   f"fewer than {P.MAX_NUMBER // 2:,} (half the numbers)", held),
                  ("--val-fraction", 0 < self.val_fraction < 0.5, "0 < f < 0.5", self.val_fraction),
                  ("--test-fraction", 0 < self.test_fraction < 0.5, "0 < f < 0.5", self.test_fraction)]
        for opt, ok, want, got in checks:  # before: "out of range (PairDataConfig(name='numbers', …" cut at 200
            if not ok:
                raise DlforgeError(f"{opt}: expected {want}, got {got:,}" if isinstance(got, int) else
                                   f"{opt}: expected {want}, got {got}")
        if self.data_file:
            self.data_file = str(Path(self.data_file).expanduser().resolve())

    @property
    def source(self) -> str:
        return f"--data-file {self.data_file}" if self.data_file else f"--data {self.name} ({','.join(self.langs)})"

    @property
    def targets(self) -> tuple[str, ...]:
        """The tags a source may carry: the languages and 'digits' (none for a TSV corpus)."""
        return () if self.data_file else self.langs + (P.DIGITS,)


@dataclass
class PairData:
    src_tok: TextTokenizer
    tgt_tok: TextTokenizer
    train: list[P.Pair]
    val: list[P.Pair]
    test: list[P.Pair]
    sha256: str
    tensors: dict = field(default_factory=dict)  # 'train' / 'val' -> (src, tgt)


def _corpus(dc: PairDataConfig, seed: int, with_train: bool = True):
    """-> (train, validation, test) pairs and the corpus's sha256 (numbers: of the split's definition)."""
    if dc.data_file:
        pairs = P.read_tsv(dc.data_file)
        digest = hashlib.sha256(Path(dc.data_file).read_bytes()).hexdigest()
        return (*P.split_pairs(pairs, dc.val_fraction, dc.test_fraction, dc.split_seed), digest)
    digest = hashlib.sha256(repr((dc.langs, dc.split_seed, dc.val_numbers, dc.test_numbers)).encode()).hexdigest()
    if not with_train:  # evaluation: the fixed held-out numbers only
        _, val, test = P.split_numbers(dc.val_numbers, dc.test_numbers, dc.split_seed)
        return [], P.number_pairs(val, dc.langs), P.number_pairs(test, dc.langs), digest
    return (*P.numbers_corpus(dc.langs, dc.train_pairs, dc.val_numbers, dc.test_numbers, dc.split_seed,
                              seed), digest)


def fit_tokenizers(dc: PairDataConfig, train: list[P.Pair]) -> tuple[TextTokenizer, TextTokenizer]:
    """On the training pairs; specials (pad, bos, eos, unk, then the target tags) take ids 0, 1, ...;
    digits stay single tokens."""
    specials = P.SPECIALS + tuple(P.tag(t) for t in dc.targets)
    fit = lambda texts: fit_tokenizer(dc.tokenizer, "\n".join(texts), dc.vocab_size, specials,  # noqa: E731
                                      split_digits=True)
    if dc.separate_vocab:
        return fit([p.src for p in train]), fit([p.tgt for p in train])
    tok = fit([p.src for p in train] + [p.tgt for p in train])
    return tok, tok


def prepare(dc: PairDataConfig, seed: int = 0, toks: tuple[TextTokenizer, TextTokenizer] | None = None,
            with_train: bool = True) -> PairData:
    """The pairs, the tokenizers (fitted unless given) and the train/validation tensors."""
    train, val, test, digest = _corpus(dc, seed, with_train)
    # a char vocabulary is the corpus's character set, held-out lines included (as nanoGPT's char-level vocabulary
    # is the whole text's): fitted on the training pairs alone, a character only a test line holds stopped the
    # run with "characters the char tokenizer never saw", a split the user neither sees nor controls
    src_tok, tgt_tok = toks or fit_tokenizers(dc, train + val + test if dc.tokenizer == "char" else train)
    data = PairData(src_tok, tgt_tok, train, val, test, digest)
    if with_train:
        data.tensors["train"] = P.encode_pairs(train, src_tok, tgt_tok, dc.max_len, dc.source)
        data.tensors["val"] = P.encode_pairs(val, src_tok, tgt_tok, dc.max_len, dc.source)
    return data


# ---------------------------------------------------------------- decoding
def _max_new(model, max_new: int | None) -> int:
    return min(max_new or model.max_len, model.max_len) - 1  # position 0 is BOS


@torch.inference_mode()
def greedy(model, src: torch.Tensor, max_new: int | None = None) -> list[list[int]]:
    """src (B, S) -> each row's most likely token at every step until EOS (cached: one token per step)."""
    B = src.shape[0]
    memory, cache = model.encode(src), model.init_cache()
    tokens = torch.full((B, 1), P.BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    for _ in range(_max_new(model, max_new)):
        nxt = _never(model.decode(tokens[:, -1:], memory, cache)[:, -1]).argmax(-1)   # (B,)
        nxt = nxt.masked_fill(done, P.PAD)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == P.EOS
        if done.all():
            break
    return [_strip(r) for r in tokens[:, 1:].tolist()]


def _never(logits: torch.Tensor) -> torch.Tensor:
    """PAD and BOS are never outputs."""
    logits[:, P.PAD] = logits[:, P.BOS] = float("-inf")
    return logits


def _strip(ids: list[int]) -> list[int]:
    """Up to (not including) EOS, without padding."""
    ids = ids[:ids.index(P.EOS)] if P.EOS in ids else ids
    return [i for i in ids if i != P.PAD]


def _lp(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's length penalty ((5 + length) / 6)^α (Wu et al., 2016)."""
    return ((5 + length) / 6) ** alpha


@torch.inference_mode()
def beam_search(model, src: torch.Tensor, beam: int = 4, length_penalty: float = 1.0,
                max_new: int | None = None) -> list[list[int]]:
    """Keep the `beam` most likely partial translations of each source (sum of log-probabilities); a
    hypothesis that has emitted EOS stays in the beam, extended by PAD at no cost. The winner maximises
    score / lp(length), lp = ((5 + length) / 6)^length_penalty. beam 1 is greedy decoding.

    Stopping is exact: a source is done when its best finished hypothesis beats every unfinished one's
    best possible outcome — its score can only fall, and its length penalty grow at most to lp(max_new)."""
    B, K = src.shape[0], beam
    steps = _max_new(model, max_new)
    dev = src.device
    rows = torch.arange(B, device=dev).repeat_interleave(K)
    memory, cache = model.encode(src).select(rows), model.init_cache()
    scores = torch.zeros(B, K, device=dev)
    scores[:, 1:] = float("-inf")                       # at first, only one live hypothesis per source
    tokens = torch.full((B * K, 1), P.BOS, dtype=torch.long, device=dev)
    finished = torch.zeros(B * K, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B * K, device=dev)            # tokens generated, EOS included
    for _ in range(steps):
        logp = _never(model.decode(tokens[:, -1:], memory, cache)[:, -1].float()).log_softmax(-1)  # (B·K, V)
        V = logp.shape[-1]
        logp[finished] = float("-inf")
        logp[finished, P.PAD] = 0.0
        top, idx = (scores.view(-1, 1) + logp).view(B, K * V).topk(K, -1)               # (B, K)
        pick = (torch.arange(B, device=dev)[:, None] * K + idx // V).view(-1)            # surviving rows
        nxt = (idx % V).view(-1)
        cache.reorder(pick)
        tokens = torch.cat([tokens[pick], nxt[:, None]], 1)
        lengths = lengths[pick] + (~finished[pick]).float()
        finished = finished[pick] | (nxt == P.EOS)
        scores = top
        fin, L = finished.view(B, K), lengths.view(B, K)
        best_done = torch.where(fin, scores / _lp(L, length_penalty), float("-inf")).amax(-1)
        best_open = torch.where(fin, float("-inf"), scores / _lp(torch.full_like(L, steps), length_penalty)
                                if length_penalty > 0 else scores).amax(-1)
        if (fin.all(-1) | (best_done >= best_open)).all():
            break
    hyps = [_strip(r) for r in tokens[:, 1:].tolist()]
    # stopped early: a finished hypothesis beats the rest; out of budget: unfinished ones compete as they are
    best = (scores / _lp(lengths.view(B, K), length_penalty)).argmax(-1).tolist()
    return [hyps[b * K + k] for b, k in enumerate(best)]


def decode_pairs(model, src_tok: TextTokenizer, tgt_tok: TextTokenizer, pairs: list[P.Pair], device: torch.device,
                 beam: int = 1, length_penalty: float = 1.0, batch_size: int = 500) -> list[str]:
    """Translate the pairs' sources, in batches of similar length (less padding). -> texts, in order."""
    model.eval()
    src_ids = P.source_ids(src_tok, [p.src for p in pairs], [p.to for p in pairs])
    order = sorted(range(len(pairs)), key=lambda i: len(src_ids[i]))
    out: list[str] = [""] * len(pairs)
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        src = P.pad([src_ids[j] for j in chunk]).to(device)
        ids = greedy(model, src) if beam == 1 else beam_search(model, src, beam, length_penalty)
        for j, t in zip(chunk, ids):
            out[j] = tgt_tok.decode(t)
    return out


# ---------------------------------------------------------------- figures
def scores(pairs: list[P.Pair], hyps: list[str], bleu: bool = False) -> dict:
    """Exact-match accuracy and character error rate (edit distance / reference length) per group and
    overall; corpus BLEU (sacreBLEU, 13a tokenisation) when asked."""
    from rapidfuzz.distance import Levenshtein
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.group, []).append(i)
    out = {}
    for name, idx in [("all", list(range(len(pairs))))] + sorted(g for g in groups.items() if g[0] != "all"):
        edits = sum(Levenshtein.distance(hyps[i], pairs[i].tgt) for i in idx)
        chars = sum(len(pairs[i].tgt) for i in idx)
        out[name] = {"pairs": len(idx), "exact_match": sum(hyps[i] == pairs[i].tgt for i in idx) / len(idx),
                     "cer": edits / max(chars, 1)}
        if bleu:
            import sacrebleu
            out[name]["bleu"] = sacrebleu.corpus_bleu([hyps[i] for i in idx], [[pairs[i].tgt for i in idx]]).score
    return out


@torch.no_grad()
def teacher_forced_loss(model, src: torch.Tensor, tgt: torch.Tensor, task: Seq2SeqTask, device: torch.device,
                        precision: str = "fp32", batch_size: int = 500) -> dict:
    model.eval()
    nll, correct, count = 0.0, 0, 0
    with autocast(precision, device):
        for i in range(0, len(src), batch_size):
            loss, stats = task.step(model, (src[i:i + batch_size].to(device), tgt[i:i + batch_size].to(device)))
            nll += loss.item() * stats["count"]
            correct += int(stats["correct"])
            count += stats["count"]
    return {"loss": nll / max(count, 1), "accuracy": correct / max(count, 1)}


def _check_decoding(beam: int, length_penalty: float) -> None:
    if not is_int(beam) or not 1 <= beam <= 64:  # 2.5 was torch's TypeError
        raise DlforgeError(f"--beam: expected 1..64, got {beam!r}")
    if not is_number(length_penalty) or not 0 <= length_penalty <= 5:
        raise DlforgeError(f"--length-penalty: expected 0..5, got {length_penalty}")


def _source(dc: PairDataConfig, src_tok: TextTokenizer, text: str, to: str | None) -> list[int]:
    if not isinstance(text, str):  # None was an AttributeError
        raise DlforgeError(f"the texts to translate: expected str, got {type(text).__name__}")
    if not text.strip():
        raise DlforgeError("the text to translate is empty")
    if dc.targets:
        if to is None:
            raise DlforgeError(f"--to: this model translates into {', '.join(dc.targets)}; say which")
        if to not in dc.targets:
            raise DlforgeError(f"--to: unknown target {to!r}; this model knows {', '.join(dc.targets)}")
    elif to is not None:
        raise DlforgeError("--to: this model was trained on an untagged corpus; leave --to out")
    try:
        ids = P.source_ids(src_tok, [text.strip()], [to or ""])[0]
    except DlforgeError as e:  # "the text has characters …" said once, not after "the text: "
        raise DlforgeError(str(e) if str(e).startswith("the text") else f"the text: {e}") from None
    if len(ids) > dc.max_len:
        raise DlforgeError(f"the text is {len(ids)} tokens long; this model reads at most {dc.max_len}")
    return ids


def cross_attention(model, src_tok: TextTokenizer, tgt_tok: TextTokenizer, text: str, to: str, output: str,
                    device: torch.device) -> dict:
    """Teacher-force the translation `output` through the decoder once -> {"source_tokens", "output_tokens",
    "layers": n_layer × (heads, T, S)}: row t is the step that writes output token t (the last writes </s>),
    column s the source token it looks at. An output longer than the decoder's positions (max_len, with <s>)
    is drawn to that length, its last row "…": a byte-level BPE model's bytes that are not UTF-8 decode to U+FFFD,
    which encodes again as three bytes, so that an undertrained model's own output could not be drawn at all."""
    src = torch.tensor(P.source_ids(src_tok, [text], [to])[0], device=device)
    out_ids = P.encode_texts(tgt_tok, [output])[0] if output else []
    cut = len(out_ids) >= model.max_len
    out_ids = out_ids[:model.max_len - 1]
    tgt = torch.tensor([P.BOS] + out_ids, device=device)
    return {"source_tokens": [src_tok.token_text(i) for i in src.tolist()],
            "output_tokens": [tgt_tok.token_text(i) for i in out_ids] + ["…" if cut else "</s>"],
            "layers": model.cross_attention_maps(src, tgt)}


def attention_map(model, src_tok: TextTokenizer, tgt_tok: TextTokenizer, text: str, to: str, output: str,
                  path: Path, device: torch.device) -> Path:
    """Draw every cross-attention head while the model writes `output` (see cross_attention)."""
    a = cross_attention(model, src_tok, tgt_tok, text, to, output, device)
    return plots.plot_cross_attention(a["layers"], a["source_tokens"], a["output_tokens"], Path(path))


def _check_pairs(data: list | tuple) -> None:
    """(source, target) pairs given in memory, each problem named by its index."""
    for i, p in enumerate(data):
        if len(p) != 2:
            raise DlforgeError(f"data: pair {i}: expected (source, target), got {len(p)} items")
        if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in p):
            raise DlforgeError(f"data: pair {i}: expected two texts, got ({', '.join(type(x).__name__ for x in p)})")
        a, b = (str(x) for x in p)
        if "\t" in a + b or "\n" in a + b:
            raise DlforgeError(f"data: pair {i} holds a tab or a line break; give one-line texts")
        if not a.strip() or not b.strip():
            raise DlforgeError(f"data: pair {i}: the {'source' if not a.strip() else 'target'} is empty")
    if len(data) < 3:
        raise DlforgeError(f"data: {len(data)} pairs; need at least 3 (train, validation, test)")


def load_tokenizers(run: Run) -> tuple[TextTokenizer, TextTokenizer]:
    src = TextTokenizer.load(run.path / "src_tokenizer.json")
    return src, (TextTokenizer.load(run.path / "tgt_tokenizer.json") if run.config.data.get("separate_vocab") else src)


NUMBERS_ONLY = ("langs", "train_pairs", "val_numbers", "test_numbers")  # options of the made corpus
TSV_ONLY = ("val_fraction", "test_fraction")                            # and of a corpus of pairs


class Seq2SeqRecipe(Recipe):
    task = "seq2seq"
    DataConfig = PairDataConfig
    default_data = "numbers"
    data_options = ("data_file", "langs", "tokenizer", "vocab_size", "separate_vocab", "train_pairs", "val_numbers",
                    "test_numbers", "val_fraction", "test_fraction", "max_len")
    model_options = {"layers": ("n_enc_layer", "n_dec_layer"), "heads": "n_head", "width": "d_model",
                     "dropout": "dropout"}
    task_options = {"label_smoothing": "label_smoothing"}
    artifacts = ("src_tokenizer.json", "tgt_tokenizer.json")

    def data_config(self, model: str, data, options: dict, out: Path) -> PairDataConfig:
        """data: numbers, a TSV file of source<TAB>target, or (source, target) pairs in memory, which are
        written to the run directory as pairs.tsv."""
        made = not (isinstance(data, (list, tuple)) or data is not None and str(data) != "numbers"
                    or options.get("data_file"))  # the numbers corpus, made here
        unused = [k for k in (TSV_ONLY if made else NUMBERS_ONLY) if k in options]
        if unused:  # before, silently ignored
            pairs, numbers = "a corpus of pairs (--data-file)", "--data numbers"
            raise DlforgeError(f"{flag(unused[0])}: applies to {pairs if made else numbers}, not to "
                               f"{numbers if made else 'a corpus of pairs'}")
        if isinstance(data, (list, tuple)) and data and all(isinstance(p, (list, tuple)) for p in data):
            _check_pairs(data)  # before they are written: their errors named pairs.tsv, a file the user never gave
            path = Path(out) / "pairs.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{a}\t{b}\n" for a, b in data), encoding="utf-8")
            return PairDataConfig(name=None, **{**options, "data_file": str(path)})
        if isinstance(data, (str, Path)) and is_file(data) or data is None and options.get("data_file"):
            return PairDataConfig(name=None, **{"data_file": str(data), **options})
        return super().data_config(model, data, options, out)

    def prepare(self, dc: PairDataConfig, seed: int, artifacts=None) -> PairData:
        t0 = time.perf_counter()
        data = prepare(dc, seed, artifacts)
        if artifacts is None and from_env().main:  # under torchrun, rank 0 alone says it
            print(f"dlforge: {len(data.train):,} training pairs made and tokenized in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        return data

    def facts(self, data: PairData, dc: PairDataConfig) -> dict:
        return {"train_pairs": len(data.train), "val_pairs": len(data.val), "test_pairs": len(data.test),
                "sha256": data.sha256, "src_vocab_size": data.src_tok.vocab_size,
                "tgt_vocab_size": data.tgt_tok.vocab_size}

    def check_task_options(self, options: dict) -> None:
        Seq2SeqTask(P.PAD, **options)

    def full_task_options(self, options: dict) -> dict:
        return {"label_smoothing": 0.1, **options}

    def model_kwargs(self, data: PairData, dc: PairDataConfig, overrides: dict, task_options: dict) -> dict:
        return {"src_vocab_size": data.src_tok.vocab_size, "tgt_vocab_size": data.tgt_tok.vocab_size,
                "max_len": dc.max_len, "pad_id": P.PAD, **overrides}

    def save_artifacts(self, run: Run, data: PairData) -> None:
        data.src_tok.save(run.path / "src_tokenizer.json")
        data.tgt_tok.save(run.path / "tgt_tokenizer.json")

    def load_artifacts(self, run: Run) -> tuple[TextTokenizer, TextTokenizer]:
        return load_tokenizers(run)

    def make_task(self, cfg: RunConfig, model: torch.nn.Module) -> Seq2SeqTask:
        return Seq2SeqTask(P.PAD, **cfg.task_options)

    def loader(self, cfg: RunConfig, data: PairData, tcfg: TrainConfig, task: Seq2SeqTask) -> BatchLoader:
        src, tgt = data.tensors["train"]
        return BatchLoader(src, tgt, tcfg.batch_size, shuffle=True, seed=tcfg.seed,
                           lengths=(src != P.PAD).sum(1) + (tgt != P.PAD).sum(1))

    def validator(self, cfg: RunConfig, data: PairData, task: Seq2SeqTask, tcfg: TrainConfig):
        """Validation loss (teacher forced, label-smoothed as in training) and greedy exact match per direction."""
        src, tgt = data.tensors["val"]

        def evaluate(model: torch.nn.Module) -> dict:
            dev = next(model.parameters()).device
            r = teacher_forced_loss(model, src, tgt, task, dev, tcfg.precision)
            s = scores(data.val, decode_pairs(model, data.src_tok, data.tgt_tok, data.val, dev))
            r["exact_match"] = s["all"]["exact_match"]
            r.update({f"exact[{g}]": v["exact_match"] for g, v in s.items() if g != "all"})
            if tcfg.progress and len(s) > 2:  # per direction, above the trainer's [Step N] line
                tqdm.write("  val exact match: " + "  ".join(f"{g} {100 * v['exact_match']:.1f}%" for g, v in s.items()
                                                             if g != "all"), file=sys.stderr)
            return r
        return evaluate

    def describe(self, cfg: RunConfig, data: PairData, loader: BatchLoader, dc: PairDataConfig) -> str:
        return (f"{dc.source} ({dc.tokenizer} tokenizer, {data.src_tok.vocab_size:,} tokens; {len(data.train):,} train / "
                f"{len(data.val):,} val pairs; {len(loader)} batches of {loader.batch_size} per epoch)")

    def after_training(self, handle: "Translator", data: PairData) -> dict:
        # the run's own report (report.json), on the first 200 test numbers of each direction for speed
        return handle.evaluate(limit=200 if not handle.config.data.get("data_file") else None, quiet=False,
                               _runs_own=True)


class Translator(Handle):
    """A trained encoder–decoder: translate(texts, to=...), attention_map(...), evaluate()."""

    @property
    def data_config(self) -> PairDataConfig:
        return PairDataConfig(**self.config.data)

    def evaluate(self, beam: int = 1, length_penalty: float = 1.0, limit: int | None = None,
                 quiet: bool = True, _runs_own: bool = False) -> dict:
        """Exact match and character error rate per direction on the held-out test pairs (BLEU for user
        corpora), decoding speed, report.json, learning curves and a cross-attention map."""
        _check_decoding(beam, length_penalty)
        self.check_current()
        dc, (src_tok, tgt_tok), model, dev = self.data_config, self.artifacts, self.model, self.device
        data = prepare(dc, self.config.facts.get("data_seed", 0), (src_tok, tgt_tok), with_train=False)
        if data.sha256 != self.config.facts.get("sha256", data.sha256):  # as a language model's evaluate says
            print(f"dlforge: note: {dc.source} changed since training (sha256 differs): the test pairs may "
                  f"not be the run's own", file=sys.stderr)
        test = data.test
        if limit is not None:  # the first `limit` test pairs of each direction
            if limit < 1:
                raise DlforgeError(f"--limit: expected at least 1, got {limit}")
            kept, seen = [], {}
            for p in test:
                seen[p.group] = seen.get(p.group, 0) + 1
                if seen[p.group] <= limit:
                    kept.append(p)
            test = kept
        t0 = time.perf_counter()
        hyps = decode_pairs(model, src_tok, tgt_tok, test, dev, beam, length_penalty)
        seconds = time.perf_counter() - t0
        per = scores(test, hyps, bleu=bool(dc.data_file))
        overall = per["all"]
        report = {"run": str(self.path), "checkpoint": str(self.checkpoint), "data": dc.source,
                  "decoding": "greedy" if beam == 1 else f"beam {beam} (length penalty {length_penalty})",
                  "test_pairs": len(test), "exact_match": overall["exact_match"], "cer": overall["cer"],
                  **({"bleu": overall["bleu"]} if "bleu" in overall else {}),
                  "sentences_per_s": len(test) / max(seconds, 1e-9), "per_direction": per,
                  "examples": [{"source": p.src, "to": p.to, "reference": p.tgt, "output": h}
                               for p, h in list(zip(test, hyps))[:: max(1, len(test) // 12)][:12]]}
        path = self.report_path(limit=None if _runs_own else limit)
        atomic_write_json(path, report)
        records = self.run.metrics()
        written = ["learning_curves.png"] if records and plots.plot_lm_curves(records, self.path / "learning_curves.png") \
            else []
        if test:
            attention_map(model, src_tok, tgt_tok, test[0].src, test[0].to, hyps[0], self.path / "attention.png", dev)
            written.append("attention.png")
        if not quiet:
            print(f"\n{report['decoding']} on {len(test):,} test pairs: exact match = {100 * report['exact_match']:.2f}% "
                  f"| CER = {100 * report['cer']:.2f}%" + (f" | BLEU = {report['bleu']:.1f}" if "bleu" in report else "")
                  + f" | {report['sentences_per_s']:.0f} sentences/s")
            for g, v in per.items():
                if g != "all":
                    print(f"  {g:<14} exact match {100 * v['exact_match']:6.2f}%   CER {100 * v['cer']:5.2f}%   "
                          f"({v['pairs']} pairs)")
            print(f"report: {path}" + (f"; plots: {', '.join(written)}" if written else ""))
        return report

    def translate(self, texts: str | list[str], to: str | None = None, beam: int = 1,
                  length_penalty: float = 1.0) -> list[dict]:
        """-> [{"source", "to", "translation"}] for each text (greedy, or beam search with beam > 1)."""
        _check_decoding(beam, length_penalty)
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise DlforgeError("the texts to translate: give at least one")
        (src_tok, tgt_tok), model = self.artifacts, self.model
        rows = [_source(self.data_config, src_tok, t, to) for t in texts]
        src = P.pad(rows).to(self.device)
        ids = greedy(model, src) if beam == 1 else beam_search(model, src, beam, length_penalty)
        return [{"source": t, "to": to, "translation": tgt_tok.decode(i)} for t, i in zip(texts, ids)]

    def attention_map(self, text: str, to: str | None, path: str | Path, translation: str | None = None) -> Path:
        """Draw every layer's and head's cross-attention while the model writes its translation of `text`."""
        src_tok, tgt_tok = self.artifacts
        path = plots.figure_path(path)
        if translation is None:
            translation = self.translate([text], to)[0]["translation"]
        return attention_map(self.model, src_tok, tgt_tok, text.strip(), to or "", translation, Path(path),
                             self.device)

    def cross_attention(self, text: str, to: str | None, translation: str | None = None) -> dict:
        """The cross-attention of every layer and head as data, while the model writes its translation of `text`
        (or `translation`): {"source_tokens", "output_tokens", "translation", "layers": n_layer × (heads, T, S)}."""
        src_tok, tgt_tok = self.artifacts
        if translation is None:
            translation = self.translate([text], to)[0]["translation"]
        else:
            _source(self.data_config, src_tok, text, to)  # the same checks as translate
        a = cross_attention(self.model, src_tok, tgt_tok, text.strip(), to or "", translation, self.device)
        return {**a, "translation": translation}


RECIPE = Seq2SeqRecipe()
Seq2SeqRecipe.handle = Translator
