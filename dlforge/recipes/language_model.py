"""Language modelling end to end: text -> tokenizer -> token streams -> model -> Trainer -> report;
then generation, next-token prediction and evaluation from the run directory alone.

The run directory holds config.json (data source, tokenizer kind, model name and sizes, training
recipe), tokenizer.json, checkpoints/{best,last}.safetensors, metrics.jsonl, report.json and plots.
Used by the CLI commands train / eval / generate / next for models whose task is 'language-model'.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from dlforge.data import text as textdata
from dlforge.data.loader import TokenLoader
from dlforge.errors import DlforgeError
from dlforge.evaluate import metrics, plots
from dlforge.recipes.base import fit, load_model
from dlforge.registry import create_model, get_entry
from dlforge.runs import Run, atomic_write_json
from dlforge.train.tasks import LanguageModelTask
from dlforge.train.trainer import Trainer, TrainConfig, autocast, pick_device

TASK = "language-model"


@dataclass
class TextDataConfig:
    name: str | None = "tinyshakespeare"
    data_file: str | None = None
    tokenizer: str = "char"
    vocab_size: int | None = None  # bpe: its size (default 512); word: a cap (default 10,000); char: every symbol
    val_fraction: float = 0.1     # the last 10% of the text validates
    block_size: int = 256         # gpt: the context window; rnn: the truncated-BPTT length
    eval_tokens: int | None = 32768  # validation tokens per evaluation during training (None: all)

    def __post_init__(self) -> None:
        if self.tokenizer not in textdata.TOKENIZERS:
            raise DlforgeError(f"--tokenizer: expected one of {', '.join(textdata.TOKENIZERS)}; got {self.tokenizer!r}")
        if self.vocab_size is None:
            self.vocab_size = textdata.WORD_VOCAB_SIZE if self.tokenizer == "word" else 512
        if not self.data_file and self.name not in textdata.CORPORA:
            raise DlforgeError(f"--data: unknown text corpus {self.name!r}; expected one of: "
                               f"{', '.join(textdata.CORPORA)} (or --data-file PATH)")
        if not 0 < self.val_fraction < 1:
            raise DlforgeError(f"--val-fraction: expected 0 < f < 1 for a language model, got {self.val_fraction}")
        if self.block_size < 1:
            raise DlforgeError(f"--block-size: expected at least 1, got {self.block_size}")
        if self.eval_tokens is not None and self.eval_tokens < 1:
            raise DlforgeError(f"--eval-tokens: expected at least 1, got {self.eval_tokens}")
        if self.data_file:  # absolute, so that the run directory works from anywhere
            self.data_file = str(Path(self.data_file).expanduser().resolve())

    @property
    def source(self) -> str:
        return f"--data-file {self.data_file}" if self.data_file else f"--data {self.name}"


@dataclass
class TextData:
    tokenizer: textdata.TextTokenizer
    train: torch.Tensor   # (N_train,) int64
    val: torch.Tensor     # (N_val,) int64
    val_chars: int        # characters of the validation text: bits per character = nats·N_val / (ln 2·chars)
    sha256: str


def prepare(dc: TextDataConfig, tok: textdata.TextTokenizer | None = None) -> TextData:
    """Read the corpus, fit the tokenizer (unless given), encode, split 90/10 contiguously."""
    text = textdata.load_corpus(dc.name, dc.data_file)
    tok = tok or textdata.fit_tokenizer(dc.tokenizer, text, dc.vocab_size)
    ids = textdata.encode_corpus(tok, text)
    train, val = textdata.split_tokens(ids, dc.val_fraction, dc.block_size, dc.source)
    return TextData(tok, train, val, len(tok.decode(val.tolist())), hashlib.sha256(text.encode()).hexdigest())


def default_block_size(model: str) -> int:
    """The variant's own context (gpt-tiny 64, gpt 256, ...); 128 for recurrent models."""
    p = inspect.signature(get_entry(model).fn).parameters.get("block_size")
    return (p.default if p is not None and isinstance(p.default, int) else None) or 128


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def lm_loss(model: torch.nn.Module, ids: torch.Tensor, block_size: int, device: torch.device, precision: str = "fp32",
            max_tokens: int | None = None, batch_tokens: int = 32768) -> dict:
    """Mean next-token cross-entropy (nats) and accuracy over a token stream, eval mode.
    Transformers: non-overlapping windows of block_size (evenly spread when max_tokens cuts them);
    recurrent models: contiguous rows with the state carried, as in training."""
    model.eval()
    T, n = block_size, len(ids) - 1
    nll, correct, count, state = 0.0, 0, 0, None
    with torch.inference_mode(), autocast(precision, device):
        for x, y, state_key in _eval_batches(model, ids, T, max_tokens, batch_tokens):
            if getattr(model, "recurrent", False):
                logits, state = model(x.to(device), None if state_key == 0 else state)
            else:
                logits, _ = model(x.to(device))
            logits, y = logits.float().flatten(0, 1), y.to(device).flatten()
            nll += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            count += y.numel()
    if not count:
        raise DlforgeError(f"no validation tokens to evaluate ({n + 1} tokens, block size {T})")
    return {"loss": nll / count, "accuracy": correct / count, "tokens": count}


def _eval_batches(model, ids: torch.Tensor, T: int, max_tokens: int | None, batch_tokens: int):
    """-> (x, y, i) batches; i is the chunk index (0: a recurrent state starts from zero)."""
    if max_tokens is not None and len(ids) > max_tokens + 1:
        if getattr(model, "recurrent", False):
            ids = ids[:max_tokens + 1]
        else:  # evenly spread windows over the whole validation text
            k = max(1, max_tokens // T)
            starts = torch.linspace(0, len(ids) - T - 1, k).long().tolist()
            chunks = torch.stack([ids[s:s + T + 1] for s in starts])
            for i in range(0, k, max(1, batch_tokens // T)):
                c = chunks[i:i + max(1, batch_tokens // T)]
                yield c[:, :-1], c[:, 1:], i
            return
    if getattr(model, "recurrent", False):
        rows = max(1, min(64, (len(ids) - 1) // T))
        L = (len(ids) - 1) // rows
        x, y = ids[:rows * L].view(rows, L), ids[1:rows * L + 1].view(rows, L)
        for i, j in enumerate(range(0, L, T)):
            yield x[:, j:j + T], y[:, j:j + T], i
        return
    w = (len(ids) - 1) // T
    x, y = ids[:w * T].view(w, T), ids[1:w * T + 1].view(w, T)
    step = max(1, batch_tokens // T)
    for i in range(0, w, step):
        yield x[i:i + step], y[i:i + step], i


def figures(loss: float, tokens_per_char: float) -> dict:
    """perplexity = e^loss; bits per character = loss / ln 2 · tokens per character."""
    return {"perplexity": metrics.perplexity(loss), "bpc": loss / math.log(2) * tokens_per_char}


def val_callback(data: TextData, dc: TextDataConfig, tcfg: TrainConfig) -> Callable[[torch.nn.Module], dict]:
    tpc = len(data.val) / max(data.val_chars, 1)

    def evaluate(model: torch.nn.Module) -> dict:
        dev = next(model.parameters()).device
        r = lm_loss(model, data.val, dc.block_size, dev, tcfg.precision, dc.eval_tokens)
        return {"loss": r["loss"], "accuracy": r["accuracy"], **figures(r["loss"], tpc)}
    return evaluate


# ---------------------------------------------------------------- training
def model_kwargs(tok: textdata.TextTokenizer, block_size: int, overrides: dict) -> dict:
    return {"vocab_size": tok.vocab_size, "block_size": block_size, **overrides}


def train(model_name: str, dc: TextDataConfig, tcfg: TrainConfig, overrides: dict, out: str, resume: bool) -> dict:
    """Train a language model into run directory `out` (or continue it); -> the evaluation report."""
    if get_entry(model_name).task != TASK:
        raise DlforgeError(f"model {model_name!r} is not a language model")
    if resume:
        run = Run.open(out, TASK)
        cfg = {**run.config, "train": asdict(tcfg)}  # the saved recipe; budgets from this call
        dc = TextDataConfig(**cfg["data"]["config"])
        data = prepare(dc, textdata.TextTokenizer.load(run.path / "tokenizer.json"))
        Run.create(out, cfg)
    else:
        data = prepare(dc)
        cfg = {"task": {"name": TASK}, "model": {"name": model_name, "kwargs": model_kwargs(
                   data.tokenizer, dc.block_size, overrides)},
               "data": {"config": asdict(dc), "train_tokens": len(data.train), "val_tokens": len(data.val),
                        "val_chars": data.val_chars, "sha256": data.sha256, "vocab_size": data.tokenizer.vocab_size},
               "train": asdict(tcfg)}
        run = Run.create(out, cfg)
        data.tokenizer.save(run.path / "tokenizer.json")
    torch.manual_seed(tcfg.seed)
    model = create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
    mode = "streams" if getattr(model, "recurrent", False) else "windows"
    loader = TokenLoader(data.train, tcfg.batch_size, dc.block_size, mode, tcfg.seed)
    if not len(loader):
        raise DlforgeError(f"--batch-size {tcfg.batch_size}: {len(data.train):,} training tokens make fewer than "
                           f"{tcfg.batch_size} streams of --block-size {dc.block_size}; use a smaller --batch-size")
    trainer = Trainer(LanguageModelTask(data.tokenizer.vocab_size), model, loader, tcfg, run,
                      val_callback(data, dc, tcfg), meta={"model": cfg["model"], "task": cfg["task"]})
    if not fit(trainer, resume, out, cfg["model"]["name"],
          f"{dc.source} ({dc.tokenizer} tokenizer, {data.tokenizer.vocab_size} tokens; {len(data.train):,} train / "
          f"{len(data.val):,} val tokens; {len(loader)} batches of {tcfg.batch_size}×{dc.block_size} per epoch)"):
        return {}  # torchrun: rank 0 reports
    return evaluate(run, data=data)


# ---------------------------------------------------------------- from a run directory
def load_run(run: Run, which: str = "best") -> tuple[dict, textdata.TextTokenizer, torch.nn.Module, str]:
    """-> (config, tokenizer, model with the checkpoint's weights, checkpoint path)."""
    model, _, path = load_model(run, which)
    return run.config, textdata.TextTokenizer.load(run.path / "tokenizer.json"), model.eval(), str(path)


def evaluate(run: Run, data: TextData | None = None, device: str = "auto", quiet: bool = False) -> dict:
    """Validation loss, perplexity, bits per character and next-token accuracy of the best checkpoint
    over the whole validation text; report.json, learning curves and (gpt) attention maps."""
    cfg, tok, model, path = load_run(run)
    dc = TextDataConfig(**cfg["data"]["config"])
    if data is None:
        data = prepare(dc, tok)
        if data.sha256 != cfg["data"]["sha256"]:
            print(f"dlforge: note: {dc.source} changed since training (sha256 differs)", file=sys.stderr)
    dev = pick_device(device)
    t0 = time.perf_counter()
    r = lm_loss(model.to(dev), data.val, dc.block_size, dev, cfg["train"]["precision"])
    seconds = time.perf_counter() - t0
    report = {"run": str(run.path), "checkpoint": path, "data": dc.source, "tokenizer": dc.tokenizer,
              "val_tokens": r["tokens"], "loss": r["loss"], "accuracy": r["accuracy"],
              **figures(r["loss"], len(data.val) / max(data.val_chars, 1)), "eval_tokens_per_s": r["tokens"] / seconds,
              "best_val_loss_during_training": min((m["val_loss"] for m in run.metrics() if "val_loss" in m), default=None)}
    atomic_write_json(run.path / "report.json", report)
    plots.plot_lm_curves(run.metrics(), run.path / "learning_curves.png")
    if hasattr(model, "attention_maps"):
        ids = data.val[: min(48, model.block_size)]
        plots.plot_attention(model.attention_maps(ids.to(dev)), [tok.token_text(i) for i in ids.tolist()],
                             run.path / "attention.png")
    if not quiet:
        print(f"\nvalidation loss = {report['loss']:.4f} | perplexity = {report['perplexity']:.2f} | "
              f"bits per character = {report['bpc']:.4f} | next-token accuracy = {100 * report['accuracy']:.2f}% "
              f"({r['tokens']:,} tokens)\nreport: {run.path / 'report.json'}; plots: learning_curves.png"
              + (", attention.png" if hasattr(model, "attention_maps") else ""))
    return report


# ---------------------------------------------------------------- sampling
def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """(B, V) -> (B, V) with -inf outside the k most likely tokens and outside the smallest set whose
    probability reaches top_p (nucleus sampling, Holtzman et al., 2019)."""
    logits = logits.clone()
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
        logits[logits < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p   # tokens after the nucleus is full (the first always stays)
        logits.scatter_(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def _pick(logits: torch.Tensor, temperature: float, top_k, top_p, gen: torch.Generator) -> torch.Tensor:
    """(1, V) logits of the last position -> (1, 1) next token; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).to(logits.device)


@torch.inference_mode()
def generate_ids(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one by one after the prompt ids (1, T0).

    Transformers see at most block_size tokens: a longer prompt is cropped to its last block_size
    tokens. With the KV cache each step runs one token; when the cache is full it restarts from the
    last block_size/2 tokens (so past the window, cached and uncached samples may differ). Without it,
    every step recomputes the whole (cropped) context. Recurrent models always carry their state."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    bs = model.block_size
    cached = use_cache or model.recurrent
    state = model.init_state(1) if cached else None
    ctx = ids if bs is None else ids[:, -bs:]
    logits, state = model(ctx, state)
    for _ in range(max_new_tokens):
        nxt = _pick(logits[:, -1], temperature, top_k, top_p, gen)  # (1, 1)
        yield int(nxt)
        ids = torch.cat([ids, nxt], 1)
        if not cached:
            logits, _ = model(ids[:, -bs:])
        elif bs is not None and state.length + 1 > bs:
            logits, state = model(ids[:, -max(1, bs // 2):], model.init_state(1))
        else:
            logits, state = model(nxt, state)


def encode_prompt(tok: textdata.TextTokenizer, prompt: str, option: str = "--prompt") -> torch.Tensor:
    if not prompt:
        raise DlforgeError(f"{option}: the text is empty; give at least one character")
    try:
        ids = tok.encode(prompt)
    except DlforgeError as e:
        raise DlforgeError(f"{option}: {e}") from None
    return torch.tensor([ids], dtype=torch.long)


def generate(run: Run, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, on_text: Callable[[str], None] | None = None,
             use_cache: bool = True, device: str = "auto") -> str:
    """Sample a continuation of `prompt`; on_text receives the text as it is produced. -> the whole text."""
    if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1) or \
            (top_p is not None and not 0 < top_p <= 1):
        raise DlforgeError("expected --max-new-tokens >= 0, --temperature >= 0, --top-k >= 1 and 0 < --top-p <= 1")
    _, tok, model, _ = load_run(run)
    dev = pick_device(device)
    ids = encode_prompt(tok, prompt).to(dev)
    new: list[int] = []
    shown = 0
    for t in generate_ids(model.to(dev), ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache):
        new.append(t)
        text = tok.decode(new)
        if on_text is not None and not text.endswith("\ufffd"):  # wait for a whole UTF-8 character (bpe)
            on_text(text[shown:])
            shown = len(text)
    text = tok.decode(new)
    if on_text is not None and shown < len(text):
        on_text(text[shown:])
    return prompt + text


@torch.inference_mode()
def next_tokens(run: Run, text: str, top_k: int = 10, device: str = "auto") -> list[dict]:
    """The top_k most likely next tokens after `text`, with probabilities (context cropped to block_size)."""
    if top_k < 1:
        raise DlforgeError(f"--top-k: expected at least 1, got {top_k}")
    _, tok, model, _ = load_run(run)
    dev = pick_device(device)
    ids = encode_prompt(tok, text, "text").to(dev)
    if model.block_size is not None:
        ids = ids[:, -model.block_size:]
    logits, _ = model.to(dev)(ids)
    probs = logits[0, -1].float().softmax(-1)
    top = probs.topk(min(top_k, probs.numel()))
    return [{"token": tok.token_text(i), "id": i, "probability": float(p)}
            for p, i in zip(top.values.tolist(), top.indices.tolist())]
