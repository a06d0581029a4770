"""Language modelling: text -> tokenizer -> token streams -> rnn / lstm / gru / gpt -> report (loss,
perplexity, bits per character); the LanguageModel handle generates, streams and ranks next tokens.

The run directory holds config.json, tokenizer.json, checkpoints/{best,last}.safetensors, metrics.jsonl,
report.json and plots. Text given in memory is kept in the run directory (corpus.txt).
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from dlforge.data import text as textdata
from dlforge.data import tokens
from dlforge.data.loader import TokenLoader
from dlforge.errors import DlforgeError
from dlforge.evaluate import metrics, plots
from dlforge.models.sampling import filter_logits, generate_ids  # noqa: F401 (this module's API)
from dlforge.recipes.base import Handle, Recipe, is_file, option_argv
from dlforge.registry import get_entry
from dlforge.runs import Run, RunConfig, atomic_write_json
from dlforge.train.tasks import LanguageModelTask
from dlforge.train.trainer import TrainConfig, autocast, check_field_types, check_seed, is_int, is_number

TASK = "language-model"
# The moving average of the weights that new language-model runs validate and load (--ema-decay; 0: none).
# Training is unchanged. With the warm-up min(d, (1 + n) / (10 + n)) it averages about the last hundred steps
# of a run: gpt-small's 1,574-step recipe ends 0.010-0.012 nats lower than its last raw weights (README,
# "Against nanoGPT"). Runs made before it have none.
EMA_DECAY = 0.99
SAMPLINGS = ("shuffled", "random")  # TextDataConfig.sampling; the first is new runs' default


@dataclass
class TextDataConfig:
    name: str | None = "tinyshakespeare"
    data_file: str | None = None
    tokenizer: str = "char"
    vocab_size: int | None = None  # bpe: its size (default 512); word: a cap (default 10,000); char: every symbol
    val_fraction: float = 0.1     # the last 10% of the text validates
    block_size: int | None = None  # gpt: the context window; rnn: the truncated-BPTT length (None: the variant's)
    eval_tokens: int | None = 32768  # validation tokens per evaluation during training (None: all)
    # gpt: how training windows are drawn. "shuffled" (new runs): each epoch, every token once (TokenLoader's
    # tiles); "random": each window at its own random offset, as nanoGPT draws them (and runs made before this
    # option, which have None). Recurrent models always read contiguous streams, each epoch once.
    sampling: str | None = None
    # recurrent models under --eval-tokens: True (new runs) reads that many tokens as up to 64 contiguous rows
    # spread evenly over the whole validation text, as transformers' windows are; False (runs made before):
    # its first tokens, which on tinyshakespeare's scored 0.07 below the whole text (README, Language models)
    eval_spread: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)  # from Python, a str for a number was a TypeError from a comparison
        if self.tokenizer not in textdata.TOKENIZERS:
            raise DlforgeError(f"--tokenizer: expected one of {', '.join(textdata.TOKENIZERS)}; got {self.tokenizer!r}")
        if self.vocab_size is None:
            self.vocab_size = textdata.WORD_VOCAB_SIZE if self.tokenizer == "word" else 512
        if not self.data_file and self.name not in textdata.CORPORA:
            raise DlforgeError(f"--data: unknown text corpus {self.name!r}; expected one of: "
                               f"{', '.join(textdata.CORPORA)} (or --data-file PATH)")
        if not 0 < self.val_fraction < 1:
            raise DlforgeError(f"--val-fraction: expected 0 < f < 1 for a language model, got {self.val_fraction}")
        if self.block_size is not None and self.block_size < 1:
            raise DlforgeError(f"--block-size: expected at least 1, got {self.block_size}")
        if self.sampling not in (None, *SAMPLINGS):
            raise DlforgeError(f"--sampling: expected one of {', '.join(SAMPLINGS)}; got {self.sampling!r}")
        if self.eval_tokens == 0:  # --eval-tokens 0: all of them
            self.eval_tokens = None
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
    train: torch.Tensor   # (N_train,) token ids: uint16/uint32, a view of the memory-mapped cache
    val: torch.Tensor     # (N_val,) the tail of the same map
    val_chars: int        # characters of the validation text: bits per character = nats·N_val / (ln 2·chars)
    sha256: str


def corpus_files(dc: TextDataConfig) -> list[Path]:
    """The corpus's files: --data-file (a file or a folder of text files) or the named corpus (downloaded
    and verified once)."""
    if dc.data_file:
        files = tokens.corpus_files(dc.data_file)
    else:
        files = [textdata.named_corpus_file(dc.name)]
    if tokens.total_bytes(files) < 1 << 20 and not "".join(t for t, _ in tokens.text_chunks(files)).strip():
        raise DlforgeError(f"{dc.source}: the file is empty" if len(files) == 1 else f"{dc.source}: the text is empty")
    return files


def fit(dc: TextDataConfig, files: list[Path]) -> textdata.TextTokenizer:
    """char: every character of the corpus (one streaming pass); word and BPE: fitted on a bounded sample."""
    if dc.tokenizer == "char":
        return textdata.TextTokenizer("char", vocab=tokens.characters(files))
    return textdata.fit_tokenizer(dc.tokenizer, tokens.sample_text(files), dc.vocab_size)


def prepare(dc: TextDataConfig, tok: textdata.TextTokenizer | None = None, progress: bool = True) -> TextData:
    """Fit the tokenizer (unless given; cached), tokenize the corpus once into a memory-mapped cache (or map
    the cached one), split it contiguously: the last val_fraction validates."""
    files = corpus_files(dc)
    digest = tokens.digest(files)
    tok = tok or tokens.cached_tokenizer(files, digest, dc.tokenizer, dc.vocab_size, lambda fs: fit(dc, fs))
    try:
        t = tokens.tokenize(files, tok, digest, progress)
    except DlforgeError as e:  # a resumed or evaluated run's text, changed since: name it
        if not str(e).startswith("the text has characters"):
            raise
        raise DlforgeError(f"{dc.source}: {e}; the run's tokenizer was made from the text as it was") from None
    if t.seconds > 1:
        mb = tokens.total_bytes(files) / 1e6
        print(f"dlforge: tokenized {mb:,.1f} MB into {len(t.ids):,} tokens in {t.seconds:.1f} s "
              f"({mb / t.seconds:.1f} MB/s): {t.path}", file=sys.stderr)
    train, val = textdata.split_tokens(t.ids, dc.val_fraction, dc.block_size, dc.source)
    return TextData(tok, train, val, t.chars_from(len(train), tok), digest)


BUDGETS = Path(__file__).with_name("budgets.json")
SIZE_OPTIONS = ("layers", "heads", "width", "block_size", "batch_size")  # any of these given: no budget table


# What a row's minutes are converted by: the row's field -> how this machine measures the same (dlforge.perf).
SPEEDS = {"peak_gflops": "fp32 matmul peak", "lstm_gflops": "LSTM layer speed", "gpt_gflops": "GPT step speed"}


def speed_measure(model: str) -> str:
    """The speed by which `model`'s rows convert minutes: the table's `speed` for that model (lstm: lstm_gflops,
    the speed of the oneDNN RNN kernels its step runs in; gpt: gpt_gflops, a small GPT's step: the matmul peak
    predicts neither across CPUs) where every row has it (its own or the table's median), else peak_gflops, the
    fp32 matmul peak."""
    table = _budget_table(BUDGETS)
    key = table.get("speed", {}).get(model, "peak_gflops")
    rows = table["recipes"].get(model, [])
    return key if key in SPEEDS and all(r.get(key) or table.get(key) for r in rows) else "peak_gflops"


OVERFIT_PAST = 1.5  # budget_options: past this multiple of the table's longest budget, the overfitting hint


def budget_recipe(model: str, minutes: float, speed: float | None = None) -> tuple[dict, float] | None:
    """The budget table's row for `model` and a budget of `minutes` on a machine of `speed` (GFLOP/s of the
    model's speed_measure: the fp32 matmul peak, or its own step's speed), and those minutes converted
    to minutes of the machine that row was measured on: minutes · speed / the row's, the same compute. Each row
    keeps the speed of its own machine (the table's rows may come from different machines or days); a row
    without one takes the table's top-level median, and speed None (or none known) takes the minutes as they are.
    None: no rows for the model.

    A row sized for b minutes and given t (both in its machine's minutes) costs about ln(t/b) units of loss when
    t > b (a model sized for a shorter budget, given more time) and k·ln(b/t) when t < b (sized for a longer
    one, stopped early); the row of least cost is taken. k, the table's `shortfall_cost`, is fitted by
    benchmarks/budget_sweep.py from the candidates it ran at budgets other than the one they won. Without it
    (k infinite) the row is that of the longest budget that fits (the shortest below them all). A finite k
    keeps a slightly slower machine on the row its budget was meant for: with k = 2.2, 27 minutes of the
    30-minute row's machine take that row, not the 10-minute one."""
    table = _budget_table(BUDGETS)
    key = speed_measure(model)
    rows = sorted(table["recipes"].get(model, []), key=lambda r: r["minutes"] * (r.get(key) or 1.0))
    if not rows:
        return None

    def there(r: dict) -> float:  # the budget in minutes of r's machine
        row_speed = r.get(key) or table.get(key)
        return minutes * (speed / row_speed if speed and row_speed else 1.0)

    k = table.get("shortfall_cost")
    if k is None:
        fits = [r for r in rows if r["minutes"] <= there(r) * (1 + 1e-6)]
        row = fits[-1] if fits else rows[0]
        return row, there(row)

    def cost(r: dict) -> float:
        ratio = math.log(max(there(r), 1e-9) / r["minutes"])
        return ratio if ratio >= 0 else -k * ratio
    row = min(rows, key=cost)  # min keeps the first (smaller) row of equal cost
    return row, there(row)


@functools.lru_cache(maxsize=4)
def _budget_table(path: Path) -> dict:
    return json.loads(path.read_text())


def machine_peak() -> float:
    """This machine's fp32 matmul GFLOP/s (dlforge.perf.matmul_peak: about half a second)."""
    from dlforge.perf import matmul_peak
    return matmul_peak()


def machine_speed(key: str) -> float:
    """This machine's speed by the measure `key` of SPEEDS (under a second each): the function of that name in
    dlforge.perf, or for the matmul peak machine_peak."""
    if key == "peak_gflops":
        return machine_peak()
    import dlforge.perf
    return getattr(dlforge.perf, key)()


def default_block_size(model: str) -> int:
    """The variant's own context (gpt-tiny 64, gpt 256, ...); 128 for recurrent models."""
    p = inspect.signature(get_entry(model).fn).parameters.get("block_size")
    return (p.default if p is not None and isinstance(p.default, int) else None) or 128


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def lm_loss(model: torch.nn.Module, ids: torch.Tensor, block_size: int, device: torch.device, precision: str = "fp32",
            max_tokens: int | None = None, batch_tokens: int = 32768, spread: bool = True) -> dict:
    """Mean next-token cross-entropy (nats) and accuracy over a token stream, eval mode.
    Transformers: non-overlapping windows of block_size (evenly spread when max_tokens cuts them);
    recurrent models: contiguous rows with the state carried, as in training (when max_tokens cuts them,
    evenly spread rows; spread=False: the first max_tokens tokens, as runs made before read them)."""
    model.eval()
    T, n = block_size, len(ids) - 1
    # at most 2^24 logits (64 MB of fp32) at once: a 8,000-token vocabulary would otherwise hold 1 GB a batch
    batch_tokens = min(batch_tokens, max(T, (1 << 24) // model.head.out_features))
    nll, correct, count, state = 0.0, 0, 0, None
    with torch.inference_mode(), autocast(precision, device):
        for x, y, state_key in _eval_batches(model, ids, T, max_tokens, batch_tokens, spread):
            if getattr(model, "recurrent", False):
                logits, state = model(x.to(device).long(), None if state_key == 0 else state)
            else:
                logits, _ = model(x.to(device).long())
            logits, y = logits.float().flatten(0, 1), y.to(device).long().flatten()
            nll += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            count += y.numel()
    if not count:
        raise DlforgeError(f"no validation tokens to evaluate ({n + 1} tokens, block size {T})")
    return {"loss": nll / count, "accuracy": correct / count, "tokens": count}


def _eval_batches(model, ids, T: int, max_tokens: int | None, batch_tokens: int, spread: bool = True):
    """-> (x, y, i) batches; i is the chunk index (0: a recurrent state starts from zero). ids is a tensor
    or a TokenArray: every batch is sliced from it, so a long validation tail is never held whole."""
    cut = max_tokens is not None and len(ids) > max_tokens + 1
    if getattr(model, "recurrent", False):  # rows contiguous streams of L tokens, read T columns at a time
        n = max_tokens if cut else len(ids) - 1
        rows = max(1, min(64, n // T))
        L = n // rows
        # cut: rows spread over the whole text, whose end is as hard as any (spread=False: its first n tokens)
        starts = torch.linspace(0, len(ids) - L - 1, rows).long().tolist() if cut and spread else \
            [r * L for r in range(rows)]
        for i, j in enumerate(range(0, L, T)):
            c = torch.stack([ids[s + j: s + min(j + T, L) + 1] for s in starts])
            yield c[:, :-1], c[:, 1:], i
        return
    if cut:  # evenly spread windows over the whole validation text
        k = max(1, max_tokens // T)
        starts = torch.linspace(0, len(ids) - T - 1, k).long().tolist()
        chunks = torch.stack([ids[s:s + T + 1] for s in starts])
        for i in range(0, k, max(1, batch_tokens // T)):
            c = chunks[i:i + max(1, batch_tokens // T)]
            yield c[:, :-1], c[:, 1:], i
        return
    w = (len(ids) - 1) // T
    step = max(1, batch_tokens // T)
    for i in range(0, w, step):
        k = min(step, w - i)
        c = ids[i * T: (i + k) * T + 1]                  # (k·T + 1,) the windows of this batch and one more
        yield c[:k * T].view(k, T), c[1:k * T + 1].view(k, T), i


def figures(loss: float, tokens_per_char: float) -> dict:
    """perplexity = e^loss; bits per character = loss / ln 2 · tokens per character."""
    return {"perplexity": metrics.perplexity(loss), "bpc": loss / math.log(2) * tokens_per_char}


class LanguageModelRecipe(Recipe):
    task = "language-model"
    DataConfig = TextDataConfig
    default_data = "tinyshakespeare"
    data_options = ("data_file", "tokenizer", "vocab_size", "val_fraction", "block_size", "eval_tokens", "sampling")
    model_options = {"layers": "n_layer", "heads": "n_head", "width": "d_model", "dropout": "dropout",
                     "pos_encoding": "pos_encoding", "tie_weights": "tie_weights",
                     "bias": "bias"}
    task_options = {"ema_decay": "ema_decay"}
    # AdamW, as nanoGPT and Hugging Face train language models: --weight-decay is decoupled from the gradient's
    # scale. Under Adam it is an L2 term that Adam's normalisation makes a pull of ~lr towards zero on every
    # weight whose gradient is small: the 10-minute budget row with --weight-decay 0.1 ended at 2.86 (near the
    # unigram loss) under adam. With no weight decay the two are the same arithmetic. Runs made before keep adam.
    train_defaults = {"optimizer": "adamw"}
    artifacts = ("tokenizer.json",)

    def budget_options(self, model: str, options: dict) -> dict:
        """`--max-time M` without sizes: the recipe that the budget table (budgets.json, fitted by
        benchmarks/budget_sweep.py) gives this model for M minutes of this machine's compute: width, depth,
        context, batch, learning rate and schedule. Flags given still win, each one; any size flag given means
        the user sizes the model and the table is not used."""
        # no budget, one the trainer refuses (its check names it, before any speed is measured), or sizes given
        if options.get("max_time") is None or not options["max_time"] > 0 or any(k in options for k in SIZE_OPTIONS):
            return options
        if not _budget_table(BUDGETS)["recipes"].get(model):  # no rows for this model: its own defaults
            return options
        key = speed_measure(model)
        speed = machine_speed(key)
        row, there = budget_recipe(model, options["max_time"], speed)
        chosen = {**row["options"], **options}
        shown = " ".join(option_argv({k: v for k, v in row["options"].items() if k not in options}))
        fitted = f" ({row[key]:.0f} GFLOP/s)" if row.get(key) else ""
        longest = max(r["minutes"] for r in _budget_table(BUDGETS)["recipes"][model])
        # Past its longest row the table sizes no model: the longest row's, trained longer, can overfit. Measured:
        # lstm --max-time 30 on a machine that made it 62.7 minutes of the 30-minute row's was best at step 4,200
        # of 9,188 (README, "Time budgets"); --early-stop 10 would have ended it after 17.8 of the 30 minutes.
        beyond = (f"; that is over {OVERFIT_PAST:g}× the table's longest budget, so this model may overfit before the "
                  f"end: the best checkpoint is kept, and --early-stop 10 ends the run once validation stops improving"
                  if row["minutes"] == longest and there > OVERFIT_PAST * longest and "early_stop" not in options else "")
        print(f"dlforge: {model} for --max-time {options['max_time']:g} min without sizes: this machine's {SPEEDS[key]} "
              f"({speed:.0f} GFLOP/s) makes that {there:.3g} min of the machine{fitted} the budget table's "
              f"{row['minutes']:g}-minute recipe was measured on; that recipe: {shown} (flags given win){beyond}",
              file=sys.stderr)
        return chosen

    def data_label(self, data, options: dict) -> str:
        """Text in memory is 'memory' (runs/MODEL-memory), not a directory named after the text."""
        return "memory" if _is_text(data) else super().data_label(data, options)

    def data_config(self, model: str, data, options: dict, out: Path) -> TextDataConfig:
        """data: a corpus name, a text file or a folder of them, or text in memory (a string with whitespace in
        it, or a list of strings, one per line), which is written to the run directory as corpus.txt."""
        defaults = {"block_size": default_block_size(model), "sampling": SAMPLINGS[0], "eval_spread": True}
        # None given for one of these is its default, as leaving it out is (block_size=None was a TypeError)
        options = {**defaults, **{k: v for k, v in options.items() if v is not None or k not in defaults}}
        if isinstance(data, (list, tuple)):
            bad = next((i for i, t in enumerate(data) if not isinstance(t, str)), None)
            if bad is not None:  # was "expected a dataset name or a file for language-model, got list"
                raise DlforgeError(f"data: a list of lines of text, but item {bad} is {type(data[bad]).__name__}")
            data = "\n".join(data)
        if isinstance(data, str) and not data.strip():  # was "unknown text corpus None"
            raise DlforgeError("data: the text is empty; give a corpus name, a text file or folder, or the text itself")
        if _is_text(data):
            path = Path(out) / "corpus.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data, encoding="utf-8")
            return TextDataConfig(name=None, **{**options, "data_file": str(path)})
        if isinstance(data, (str, Path)) and is_file(data, folders=True):
            return TextDataConfig(name=None, **{**options, "data_file": str(data)})
        if data is None and options.get("data_file"):
            return TextDataConfig(name=None, **options)
        return super().data_config(model, data, options, out)

    def prepare(self, dc: TextDataConfig, seed: int, artifacts=None) -> TextData:
        return prepare(dc, artifacts)

    def facts(self, data: TextData, dc: TextDataConfig) -> dict:
        return {"train_tokens": len(data.train), "val_tokens": len(data.val), "val_chars": data.val_chars,
                "sha256": data.sha256, "vocab_size": data.tokenizer.vocab_size}

    def model_kwargs(self, data: TextData, dc: TextDataConfig, overrides: dict, task_options: dict) -> dict:
        return {"vocab_size": data.tokenizer.vocab_size, "block_size": dc.block_size, **overrides}

    def save_artifacts(self, run: Run, data: TextData) -> None:
        data.tokenizer.save(run.path / "tokenizer.json")

    def load_artifacts(self, run: Run) -> textdata.TextTokenizer:
        return textdata.TextTokenizer.load(run.path / "tokenizer.json")

    def check_task_options(self, options: dict) -> None:
        LanguageModelTask(vocab_size=1, **options)

    def full_task_options(self, options: dict) -> dict:
        return {"ema_decay": EMA_DECAY, **options}

    def make_task(self, cfg: RunConfig, model: torch.nn.Module) -> LanguageModelTask:
        return LanguageModelTask(cfg.model_kwargs["vocab_size"], recurrent=bool(getattr(model, "recurrent", False)),
                                 **cfg.task_options)  # runs made before the moving average have none

    def loader(self, cfg: RunConfig, data: TextData, tcfg: TrainConfig, task: LanguageModelTask) -> TokenLoader:
        """gpt: windows, shuffled or drawn at random (--sampling); recurrent models: contiguous streams, one per
        batch row (truncated BPTT)."""
        dc = TextDataConfig(**cfg.data)
        if task.recurrent and dc.sampling == "random":
            raise DlforgeError(f"--sampling random: {cfg.model} is recurrent and reads the text as contiguous "
                               f"streams (truncated backpropagation through time), each epoch once; only gpt draws "
                               f"random windows")
        mode = "streams" if task.recurrent else "tiles" if dc.sampling == "shuffled" else "windows"
        loader = TokenLoader(data.train, tcfg.batch_size, dc.block_size, mode, tcfg.seed)
        if not len(loader):
            raise DlforgeError(f"--batch-size {tcfg.batch_size}: {len(data.train):,} training tokens make fewer than "
                               f"{tcfg.batch_size} streams of --block-size {dc.block_size}; use a smaller --batch-size")
        return loader

    def validator(self, cfg: RunConfig, data: TextData, task: LanguageModelTask, tcfg: TrainConfig):
        dc = TextDataConfig(**cfg.data)
        tpc = len(data.val) / max(data.val_chars, 1)

        def evaluate(model: torch.nn.Module) -> dict:
            dev = next(model.parameters()).device
            with task.averaged(model):
                r = lm_loss(model, data.val, dc.block_size, dev, tcfg.precision, dc.eval_tokens, spread=dc.eval_spread)
            return {"loss": r["loss"], "accuracy": r["accuracy"], **figures(r["loss"], tpc)}
        return evaluate

    def describe(self, cfg: RunConfig, data: TextData, loader: TokenLoader, dc: TextDataConfig) -> str:
        return (f"{dc.source} ({dc.tokenizer} tokenizer, {data.tokenizer.vocab_size:,} tokens; {len(data.train):,} "
                f"train / {len(data.val):,} val tokens; {len(loader)} batches of {loader.batch_size}×{dc.block_size} "
                f"per epoch)")

    def after_training(self, handle: "LanguageModel", data: TextData) -> dict:
        return handle.evaluate(quiet=False, _data=data)


def _is_text(data) -> bool:
    """Text given in memory: a string with whitespace in it that names no file (a corpus name has none)."""
    return isinstance(data, str) and any(c.isspace() for c in data) and not is_file(data, folders=True)


class LanguageModel(Handle):
    """A trained language model: generate(prompt), stream(prompt), next_tokens(text), evaluate()."""

    @property
    def tokenizer(self) -> textdata.TextTokenizer:
        return self.artifacts

    def evaluate(self, quiet: bool = True, _data: TextData | None = None) -> dict:
        """Validation loss, perplexity, bits per character and next-token accuracy of the best checkpoint over
        the whole validation text; report.json, learning curves and (gpt) attention maps."""
        self.check_current()
        cfg, tok, model = self.config, self.tokenizer, self.model
        dc = TextDataConfig(**cfg.data)
        data = _data
        if data is None:
            data = prepare(dc, tok)
            if data.sha256 != cfg.facts["sha256"]:
                print(f"dlforge: note: {dc.source} changed since training (sha256 differs)", file=sys.stderr)
        t0 = time.perf_counter()
        r = lm_loss(model, data.val, dc.block_size, self.device, cfg.train["precision"])
        seconds = time.perf_counter() - t0
        records = self.run.metrics()
        report = {"run": str(self.path), "checkpoint": str(self.checkpoint), "data": dc.source,
                  "tokenizer": dc.tokenizer, "val_tokens": r["tokens"], "loss": r["loss"], "accuracy": r["accuracy"],
                  **figures(r["loss"], len(data.val) / max(data.val_chars, 1)),
                  "eval_tokens_per_s": r["tokens"] / max(seconds, 1e-9),
                  "best_val_loss_during_training": min((m["val_loss"] for m in records if "val_loss" in m), default=None)}
        path = self.report_path()
        atomic_write_json(path, report)
        written = ["learning_curves.png"] if records and plots.plot_lm_curves(records, self.path / "learning_curves.png") \
            else []
        if hasattr(model, "attention_maps"):  # a gpt: what each head looks at in a stretch of validation text
            ids = data.val[: min(48, model.block_size)]
            plots.plot_attention(model.attention_maps(ids.long().to(self.device)), [tok.token_text(i) for i in ids.tolist()],
                                 self.path / "attention.png")
            written.append("attention.png")
        if not quiet:
            print(f"\nvalidation loss = {report['loss']:.4f} | perplexity = {report['perplexity']:.2f} | "
                  f"bits per character = {report['bpc']:.4f} | next-token accuracy = {100 * report['accuracy']:.2f}% "
                  f"({r['tokens']:,} tokens)\nreport: {path}"
                  + (f"; plots: {', '.join(written)}" if written else ""))
        return report

    @property
    def default_prompt(self) -> str:
        """What `dlforge generate` continues without --prompt: a newline, or where the training text had none
        (a char tokenizer then cannot encode one), a space, else the vocabulary's first token."""
        for text in ("\n", " "):
            try:
                self.tokenizer.encode(text)
                return text
            except DlforgeError:
                pass
        return self.tokenizer.decode([0])

    def stream(self, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, seed: int = 0, use_cache: bool = True, counts: bool = False
               ) -> Iterator[str] | Iterator[tuple[str, int]]:
        """Yield the continuation of `prompt` piece by piece as it is sampled (whole UTF-8 characters); with
        counts, (piece, the number of tokens it decodes) — a bpe character can take several tokens, and
        re-encoding the text does not give back the tokens sampled (the server's usage counts these)."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        check_seed(seed)
        ids = encode_prompt(self.tokenizer, prompt).to(self.device)
        pieces = decode_stream(self.tokenizer, generate_ids(self.model, ids, max_new_tokens, temperature, top_k,
                                                            top_p, seed, use_cache), counts=True)
        yield from pieces if counts else (text for text, _ in pieces)

    def generate(self, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, use_cache: bool = True) -> str:
        """The prompt and a sampled continuation (temperature 0: greedy)."""
        return prompt + "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed, use_cache))

    @torch.inference_mode()
    def next_tokens(self, text: str, top_k: int = 10) -> list[dict]:
        """The top_k most likely next tokens after `text`, with probabilities (context cropped to block_size)."""
        if not is_int(top_k) or top_k < 1:  # None (as generate takes) was a TypeError
            raise DlforgeError(f"--top-k: expected an integer, at least 1, got {top_k!r}")
        tok, model = self.tokenizer, self.model
        ids = encode_prompt(tok, text, "text").to(self.device)
        if model.block_size is not None:
            ids = ids[:, -model.block_size:]
        logits, _ = model(ids)
        probs = logits[0, -1].float().softmax(-1)
        top = probs.topk(min(top_k, probs.numel()))
        return [{"token": tok.token_text(i), "id": i, "probability": round(float(p), 6)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())]

    @torch.inference_mode()
    def attention(self, text: str) -> dict:
        """A gpt's attention over `text` (its last block_size tokens): {"tokens": [str], "layers": n_layer ×
        (heads, T, T) probabilities, rows the query token, columns the keys}. Recurrent models have none."""
        if not hasattr(self.model, "attention_maps"):
            raise DlforgeError(f"attention: {self.config.model} is recurrent; only a gpt has attention heads")
        ids = encode_prompt(self.tokenizer, text, "text")[0, -self.model.block_size:]
        return {"tokens": [self.tokenizer.token_text(i) for i in ids.tolist()],
                "layers": self.model.attention_maps(ids.to(self.device))}


# ---------------------------------------------------------------- prompts and options
def decode_stream(tok: textdata.TextTokenizer, ids: Iterator[int], counts: bool = False
                  ) -> Iterator[str] | Iterator[tuple[str, int]]:
    """The text of token ids as they come, one piece per token once it ends a whole UTF-8 character (bpe: a
    character's bytes may span tokens); the pieces join to tok.decode(all ids). Only the tokens not yet shown
    are decoded, so each token costs the same however long the text is (decoding everything each time is
    O(n) per token). counts: (piece, how many tokens it decodes)."""
    pending: list[int] = []
    for t in ids:
        pending.append(t)
        text = tok.decode(pending)
        if not text.endswith("\ufffd"):  # ends on a character boundary: what follows decodes on its own
            yield (text, len(pending)) if counts else text
            pending = []
    if pending:
        yield (tok.decode(pending), len(pending)) if counts else tok.decode(pending)


def encode_prompt(tok: textdata.TextTokenizer, prompt: str, option: str = "--prompt") -> torch.Tensor:
    if not isinstance(prompt, str):  # a list was read as characters ("never saw: 'cat', 'the'"), 5 a TypeError
        raise DlforgeError(f"{option}: expected text (a str), got {type(prompt).__name__}")
    if not prompt:
        raise DlforgeError(f"{option}: the text is empty; give at least one character")
    try:
        ids = tok.encode(prompt)
    except DlforgeError as e:
        raise DlforgeError(f"{option}: {e}") from None
    return torch.tensor([ids], dtype=torch.long)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Each limit on its own: the message names the option that is out of range. Types first: from Python, 2.5
    new tokens, top_k=1.5 or temperature="hot" reached torch as a TypeError."""
    for opt, v, ok, want in (("--max-new-tokens", max_new_tokens, is_int(max_new_tokens), "an integer"),
                             ("--top-k", top_k, top_k is None or is_int(top_k), "an integer"),
                             ("--temperature", temperature, is_number(temperature), "a number"),
                             ("--top-p", top_p, top_p is None or is_number(top_p), "a number")):
        if not ok:
            raise DlforgeError(f"{opt}: expected {want}, got {v!r}")
    checks = [("--max-new-tokens", max_new_tokens >= 0, "0 or more"), ("--temperature", 0 <= temperature < math.inf,
              "0 (greedy) or more, finite"), ("--top-k", top_k is None or top_k >= 1, "at least 1"),
              ("--top-p", top_p is None or 0 < top_p <= 1, "a probability in (0, 1]")]
    for opt, ok, want in checks:
        if not ok:
            value = {"--max-new-tokens": max_new_tokens, "--temperature": temperature, "--top-k": top_k,
                     "--top-p": top_p}[opt]
            raise DlforgeError(f"{opt}: expected {want}, got {value}")


RECIPE = LanguageModelRecipe()
LanguageModelRecipe.handle = LanguageModel
