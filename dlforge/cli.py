"""The `dlforge` command: one table of subcommands -> plain functions that fill config dataclasses.

dlforge's own errors (DlforgeError) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from dlforge.errors import DlforgeError
from dlforge.train.interrupt import TrainingInterrupted


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,32; got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 64,32; got {text!r}")
    return vals


def _seed(text: str) -> int:
    from dlforge.train.trainer import check_seed
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return check_seed(seed)  # its DlforgeError passes through argparse: one line, as any out-of-range option


BEAMS, WITH_LM = "to beam search (--beam 2 or more)", "with --lm (shallow fusion with a language model)"


def _refuse_unused(given: dict, names: tuple[str, ...], used: bool, when: str) -> None:
    """An option given that this command's other choices ignore is refused by name: --length-penalty at --beam 1,
    --lm-weight without --lm, backprop's --momentum with adam were each accepted and ignored."""
    for name in names:
        if given.get(name) is not None and not used:
            raise DlforgeError(f"--{name.replace('_', '-')}: applies {when} only")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Rows in columns as wide as what they hold (the last column as it is)."""
    wide = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, wide)) + "  " + r[-1])


def _print_json(obj: dict) -> None:
    print(json.dumps(_short_floats(obj), default=float))


def _short_floats(obj):
    """Floats that came from float32 (0.14000000059604645) printed as the float32 they are (0.14)."""
    if isinstance(obj, float):
        import numpy as np
        f32 = float(np.float32(obj))
        return float(str(np.float32(obj))) if f32 == obj else obj
    if isinstance(obj, dict):
        return {k: _short_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_short_floats(v) for v in obj]
    return obj


# ---------------------------------------------------------------- data, models, summary
def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "prepare"])
    p.add_argument("--data", help="prepare: a named corpus (tinyshakespeare)")
    p.add_argument("--data-file", help="prepare: a text file or a folder of text files (.txt, .md, source; .gz)")
    p.add_argument("--tokenizer", default="char", help="char (default) | word | bpe")
    p.add_argument("--vocab-size", type=int, help="bpe: vocabulary size (512); word: a cap (10000)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def cmd_data(args: argparse.Namespace) -> None:
    if args.action == "prepare":
        return _prepare_text(args)
    from dlforge.data.images import DATASETS
    from dlforge.data.text import CORPORA, corpus_path
    rows = [(name, info.where(), info.description) for name, info in DATASETS.items()]
    rows += [(name, str(corpus_path(name)) if corpus_path(name).is_file() else "downloaded on first use",
              f"{c.description} (text, for language models)") for name, c in CORPORA.items()]
    rows += [("numbers", "made offline by num2words", "0..999,999 in words <-> digits: pt, es, pl, it, sr, en "
              "(pairs, for the transformer)"),
             ("spoken-numbers", "made offline by num2words + espeak-ng", "the same numbers spoken at 16 kHz by eSpeak "
              "NG voices (speech, for asr-lstm / asr-gru)")]
    _print_table([("name", "where", "description"), *rows])  # a cache path overflowed a fixed column


def _prepare_text(args: argparse.Namespace) -> None:
    """What `train` would do first, done once: the tokenizer fitted and the corpus tokenized into the cache
    that every later run on the same text and tokenizer maps."""
    import time

    from dlforge.data import tokens
    from dlforge.recipes.language_model import TextDataConfig, corpus_files, fit
    from dlforge.recipes.base import check_conflicts, recipe_for
    check_conflicts(recipe_for("language-model"), args.data, {"data_file": args.data_file, "tokenizer": args.tokenizer,
                                                              "vocab_size": args.vocab_size})
    dc = TextDataConfig(name=None if args.data_file else (args.data or "tinyshakespeare"), data_file=args.data_file,
                        tokenizer=args.tokenizer, vocab_size=args.vocab_size, block_size=1)
    files = corpus_files(dc)
    t0 = time.perf_counter()
    digest = tokens.digest(files)
    tok = tokens.cached_tokenizer(files, digest, dc.tokenizer, dc.vocab_size, lambda fs: fit(dc, fs))
    t = tokens.tokenize(files, tok, digest, args.progress)
    mb, seconds = tokens.total_bytes(files) / 1e6, time.perf_counter() - t0
    print(f"{dc.source}: {len(files):,} file(s), {mb:,.1f} MB -> {len(t.ids):,} tokens ({dc.tokenizer}, "
          f"{tok.vocab_size:,} token vocabulary, {t.ids.dtype}) in {seconds:.1f} s"
          + (f" ({mb / t.seconds:.1f} MB/s tokenizing)" if t.seconds else " (already in the cache)") + f"\n{t.path}")


def cmd_models(args: argparse.Namespace) -> None:
    from dlforge.registry import ALIASES, entries
    _print_table([(e.name, e.task, e.doc) for e in entries()]  # transformer-base was wider than its column
                 + [(alias, "", f"= {name}") for alias, name in ALIASES.items()])


def cmd_summary(args: argparse.Namespace) -> None:
    """Per leaf layer: type, output shape (image classifiers, from a forward pass of a zero image) and parameters.
    Any other model: its layers and parameters at its default sizes (a run's data can change some, e.g. the
    vocabulary), with no forward pass, as what it takes differs by family."""
    from dlforge.recipes.classify import summary
    from dlforge.registry import create_model, get_entry
    image = {"in_channels": args.in_channels, "img_size": args.img_size, "num_classes": args.num_classes}
    task = get_entry(args.model).task
    if task != "classify":
        given = [f"--{k.replace('_', '-')}" for k, v in image.items() if v is not None]
        if given:
            raise DlforgeError(f"{given[0]}: applies to image classifiers only; {args.model} is not one (task: {task})")
        rows, total = summary(create_model(args.model), None)
        print(f"{args.model} ({task}), at its default sizes (a run's data can change some, e.g. its vocabulary); "
              f"output shapes are shown for image classifiers")
    else:
        for k, v in image.items():  # before: torch's RuntimeError (0 channels, a negative dimension) as a traceback
            if v is not None and not 1 <= v <= (1024 if k == "img_size" else 100_000):
                raise DlforgeError(f"--{k.replace('_', '-')}: expected 1..{1024 if k == 'img_size' else 100_000:,}, "
                                   f"got {v}")
        kw = {"in_channels": 3, "img_size": 48, "num_classes": 10,
              **{k: v for k, v in image.items() if v is not None}}
        rows, total = summary(create_model(args.model, **kw), (kw["in_channels"], kw["img_size"], kw["img_size"]))
        print(f"{args.model}: input (B, {kw['in_channels']}, {kw['img_size']}, {kw['img_size']})")
    width = max([12, *(len(name) for name, *_ in rows)])
    print(f"{'layer':<{width}} {'type':<12} {'output shape':<22} {'parameters':>12}")
    print("-" * (width + 48))
    for name, kind, shape, n in rows:
        dims = "(B, " + ", ".join(map(str, shape[1:])) + ")" if shape else ""
        print(f"{name:<{width}} {kind:<12} {dims:<22} {n:>12,}")
    print("-" * (width + 48))
    print(f"{'total':<{width + 35}} {total:>12,}")


# ---------------------------------------------------------------- train / eval / predict
CLI_ONLY = ("command", "fn", "model", "data", "out", "resume", "json")


def cmd_train(args: argparse.Namespace) -> None:
    """Every flag given (and only those: the parser has no defaults) goes to dlforge.train as an option; one
    that does not apply to the model is an error there, naming the flag."""
    import dlforge
    options = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    run = dlforge.train(args.model, getattr(args, "data", None), out=getattr(args, "out", None),
                        resume=getattr(args, "resume", False), **options)
    if getattr(args, "json", False) and run is not None:
        _print_json({k: v for k, v in run.report.items() if k not in ("per_class", "confusion_matrix")}
                    if run.config.task == "classify" else run.report)


EVAL_OPTIONS = {"classify": ("data", "data_dir"), "seq2seq": ("beam", "length_penalty", "limit"),
                "speech": ("beam", "lm", "lm_weight", "lm_bonus", "limit"),
                "denoise": ("classifier", "n", "sampler", "steps", "guidance", "eta", "seed"), "language-model": ()}


def cmd_eval(args: argparse.Namespace) -> None:
    import dlforge
    handle = dlforge.load(args.run, device=args.device)
    if not os.access(handle.path, os.W_OK):  # before: it evaluated in full, then failed to write and showed nothing
        raise DlforgeError(f"{handle.path}: read-only; eval writes report.json and its plots into the run "
                           f"directory: copy the run somewhere writable first (cp -r)")
    task = handle.config.task
    given = {k: v for k, v in vars(args).items() if k not in ("command", "fn", "run", "device", "json")}
    for k in given:
        if k not in EVAL_OPTIONS[task]:
            raise DlforgeError(f"--{k.replace('_', '-')}: does not apply to evaluating a {task} run")
    _refuse_unused(given, ("length_penalty",), given.get("beam", 1) > 1, BEAMS)
    _refuse_unused(given, ("lm_weight", "lm_bonus"), "lm" in given, WITH_LM)
    report = handle.evaluate(quiet=args.json, **given)
    if args.json:
        _print_json(report)


def cmd_predict(args: argparse.Namespace) -> None:
    from dlforge.recipes.classify import Classifier
    results = Classifier(_open(args.run, "classify"), device=args.device).predict(args.images, args.top_k)
    if args.json:
        _print_json({"predictions": results})
        return
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['class']:<20} {100 * t['probability']:6.2f}%")


def _open(path: str, task: str):
    from dlforge.runs import Run
    return Run.open(path, task)


# ---------------------------------------------------------------- language models
def cmd_generate(args: argparse.Namespace) -> None:
    from dlforge.recipes.language_model import LanguageModel
    lm = LanguageModel(_open(args.run, "language-model"), device=args.device)
    if args.prompt is None:
        args.prompt = lm.default_prompt
    pieces = lm.stream(args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                       not args.no_cache)
    if args.stream:
        sys.stdout.write(args.prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
    else:
        print(args.prompt + "".join(pieces))


def cmd_next(args: argparse.Namespace) -> None:
    from dlforge.recipes.language_model import LanguageModel
    top = LanguageModel(_open(args.run, "language-model"), device=args.device).next_tokens(args.text, args.top_k)
    if args.json:
        _print_json({"text": args.text, "next": top})
        return
    for t in top:
        print(f"{t['token']!r:<20} {100 * t['probability']:6.2f}%")


# ---------------------------------------------------------------- sequence to sequence
def cmd_translate(args: argparse.Namespace) -> None:
    from dlforge.evaluate.plots import figure_path
    from dlforge.recipes.seq2seq import Translator
    _refuse_unused(vars(args), ("length_penalty",), args.beam > 1, BEAMS)
    tr = Translator(_open(args.run, "seq2seq"), device=args.device)
    if args.attention_map:
        figure_path(args.attention_map)  # before translating
    out = tr.translate(args.text, args.to, args.beam, 1.0 if args.length_penalty is None else args.length_penalty)
    if args.attention_map:
        tr.attention_map(args.text[0], args.to, args.attention_map, out[0]["translation"])
    if args.json:
        _print_json({"translations": out})  # one shape for one text or many, as predict's {"predictions": [...]}
        return
    for r in out:
        print(r["translation"] if r["translation"] else "(empty translation)")
    if args.attention_map:
        print(f"cross-attention: {args.attention_map}", file=sys.stderr)


# ---------------------------------------------------------------- speech recognition
def cmd_transcribe(args: argparse.Namespace) -> None:
    from dlforge.recipes.transcribe import Transcriber
    _refuse_unused(vars(args), ("lm_weight", "lm_bonus"), args.lm is not None, WITH_LM)
    tr = Transcriber(_open(args.run, "speech"), device=args.device)
    out = tr.transcribe(args.audio, args.beam, args.lm, **{k: getattr(args, k) for k in ("lm_weight", "lm_bonus")
                                                           if getattr(args, k) is not None})
    if args.alignment:
        tr.alignment_plot(args.audio[0], args.alignment)
    if args.json:
        _print_json({"transcripts": out})  # one shape for one file or many
        return
    for r in out:
        print(f"{r['audio']}\t{r['text']}" if len(out) > 1 else r["text"])
    if args.alignment:
        sys.stdout.flush()
        print(f"alignment: {args.alignment}", file=sys.stderr)


def _add_transcribe(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a speech-recognition run directory (asr-lstm, asr-gru, ...)")
    p.add_argument("audio", nargs="+", help="sound files (WAV, FLAC, OGG; any sample rate; at most 60 s each)")
    p.add_argument("--beam", type=int, default=1, help="prefix beam-search width (1: greedy, the default)")
    p.add_argument("--lm", help="a character language-model run (dlforge train lstm --data-file TRANSCRIPTS.txt) "
                                "for shallow fusion (implies beam search; --beam 8 is a good start)")
    p.add_argument("--lm-weight", type=float, help="with --lm: weight w of log p_LM (default 0.5)")
    p.add_argument("--lm-bonus", type=float, help="with --lm: score bonus per character (default 0)")
    p.add_argument("--alignment", help="write the first file's log-mel spectrogram and CTC alignment to this PNG")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


# ---------------------------------------------------------------- diffusion
def cmd_sample(args: argparse.Namespace) -> None:
    from dlforge.recipes.denoise import Diffuser
    d = Diffuser(_open(args.run, "denoise"), device=args.device, ema=not args.no_ema)
    r = d.sample_grid(args.prompt or [], args.n, args.sampler, args.steps, args.guidance, args.eta, args.seed,
                      args.out, args.trajectory)
    if args.json:
        _print_json(r)
        return
    print(f"{r['images']} images in {r['seconds']:.1f} s: {r['out']}" +
          (f"; reverse process: {r['trajectory']}" if args.trajectory else ""))


def cmd_export(args: argparse.Namespace) -> None:
    import dlforge
    r = dlforge.load(args.run, device="cpu").export(args.out, args.format, args.int8)
    if args.json:
        _print_json({k: r[k] for k in ("out", "files", "graphs")})
        return
    for name, g in r["graphs"].items():
        q = f" + {g['int8']['file']}" if "int8" in g else ""
        print(f"{g['file']}{q}: {', '.join(i['name'] for i in g['inputs'][:4])}{' …' if len(g['inputs']) > 4 else ''}"
              f" -> {', '.join(o['name'] for o in g['outputs'][:3])}{' …' if len(g['outputs']) > 3 else ''} "
              f"(ONNX Runtime = torch within {g['check']['max_abs_diff']:.1g})")
    print(f"wrote {r['out']}: {', '.join(r['files'])}")


def cmd_serve(args: argparse.Namespace) -> None:
    from dlforge.serve import Limits, serve
    limits = Limits(queue_size=args.queue_size, timeout_s=args.timeout, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms)
    serve(args.runs, args.host, args.port, args.token_file, limits, args.device, args.log_level)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, each loaded once")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1; any other needs "
                                                        "--token-file)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="a file holding the token every request must send as Authorization: Bearer")
    p.add_argument("--device", default="auto")
    p.add_argument("--queue-size", type=int, default=64, help="requests admitted per model; then 429 (default 64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request; then 504 (default 30)")
    p.add_argument("--max-batch", type=int, default=32, help="predict: images per forward pass (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="predict: how long a request waits for others")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory")
    p.add_argument("--format", default="onnx", help="onnx (the only one so far)")
    p.add_argument("--int8", action="store_true", help="also write int8 graphs (classifiers: static, calibrated on 512 training images; others: dynamic)")
    p.add_argument("--out", help="the folder to write (default RUN/onnx); a new or empty one, or a previous export")
    p.add_argument("--json", action="store_true")


def cmd_noise(args: argparse.Namespace) -> None:
    from dlforge.recipes import denoise
    r = denoise.noise(args.image, args.out, args.frames, args.timesteps, args.beta_schedule, args.size, args.seed)
    print(f"forward process at t = {', '.join(map(str, r['timesteps']))}: {r['out']}")


def _add_sampling(p) -> None:
    p.add_argument("--sampler", default="ddim", help="ddim | ddpm")
    p.add_argument("--steps", type=int, help="denoising steps (default: ddim 50, ddpm all of the training timesteps)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1: none, 0: "
                                                               "unconditional)")
    p.add_argument("--eta", type=float, help="ddim: 0 deterministic (default) ... 1 as random as ddpm")
    p.add_argument("--seed", type=_seed, default=0)


def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a diffusion run directory")
    p.add_argument("--prompt", action="append", help="what to draw, e.g. \"an ankle boot\" (repeat for several)")
    p.add_argument("--n", type=int, default=16, help="images per prompt")
    _add_sampling(p)
    p.add_argument("--out", help="the grid PNG (default RUN/sample.png)")
    p.add_argument("--trajectory", help="also draw the reverse process, noise to image, to this PNG")
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights, not their moving average")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def _add_noise(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="any image file")
    p.add_argument("--out", default="noise.png", help="the strip PNG")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--beta-schedule", default="linear", help="linear | cosine")
    p.add_argument("--size", type=int, default=64, help="resize the image to this side first")
    p.add_argument("--seed", type=_seed, default=0)


# ---------------------------------------------------------------- the NumPy engine
def cmd_backprop(args: argparse.Namespace) -> None:
    from dlforge.scratch.train import BackpropConfig, run_backprop
    _refuse_unused(vars(args), ("momentum",), args.optimizer == "sgd", "to --optimizer sgd")
    cfg = BackpropConfig(data=args.data, hidden=args.hidden, activation=args.activation, optimizer=args.optimizer,
                         lr=args.lr, momentum=0.9 if args.momentum is None else args.momentum,
                         weight_decay=args.weight_decay, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, dtype=args.dtype, trace=args.trace,
                         json=args.json, data_dir=args.data_dir)
    run_backprop(cfg)


def cmd_plot(args: argparse.Namespace) -> None:
    from dlforge.scratch.plots import plot_activations
    plot_activations(args.out)
    print(f"wrote {args.out}")


# ---------------------------------------------------------------- the table
def _add_train(p: argparse.ArgumentParser) -> None:
    """No defaults here (argument_default=SUPPRESS): a flag reaches dlforge.train only when it is given, so that
    a flag foreign to the model is an error, and each recipe's and TrainConfig's defaults apply."""
    p.add_argument("model", help="a registered model (see `dlforge models`)")
    p.add_argument("--data", help="dataset name (see `dlforge data list`) or file; default digits, tinyshakespeare, "
                                  "numbers or fashion-mnist by family")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATA, numbered if it exists)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, with "
                                                          "its own data, model and recipe (budgets may change)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the test figures")
    t = p.add_argument_group("training (every model)")
    t.add_argument("--epochs", type=int, help="default 5, or as many as --max-steps needs; unbounded with --max-time")
    t.add_argument("--batch-size", type=int, help="default 64; speech 32")
    t.add_argument("--lr", type=float, help="default 1e-3")
    t.add_argument("--weight-decay", type=float, help="default 1e-4")
    t.add_argument("--weight-decay-on", help="all (default) | matrices: weight matrices, embeddings and kernels, "
                                             "not biases or norm gains (as nanoGPT and Hugging Face)")
    t.add_argument("--optimizer", help="adam (default; language models adamw) | adamw | sgd | rmsprop")
    t.add_argument("--seed", type=_seed, help="default 0")
    t.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N | mps")
    t.add_argument("--precision", help="fp32 (default) | bf16 | fp16 (autocast)")
    t.add_argument("--max-steps", type=int, help="stop at a clean checkpoint after N optimiser steps")
    t.add_argument("--max-time", type=float, help="stop at a clean checkpoint after this many minutes")
    t.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value (default: none; "
                                                   "speech 5)")
    t.add_argument("--grad-accum", type=int, help="run each batch as K micro-batches (less memory, the same step)")
    t.add_argument("--early-stop", type=int, help="stop after N evaluations without a lower validation loss")
    t.add_argument("--lr-schedule", help="constant (default) | cosine (decays to --min-lr-ratio·lr by the end of "
                   "--max-steps / --max-time / the epochs)")
    t.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up over N steps")
    t.add_argument("--min-lr-ratio", type=float, help="cosine floor as a fraction of --lr (default 0.1)")
    t.add_argument("--decay-steps", type=int, help="cosine length in steps (default: the training budget)")
    t.add_argument("--beta2", type=float, help="adam/adamw's second-moment decay (default 0.999; the --max-time "
                                                 "budget table's GPT and LSTM rows 0.99)")
    t.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps (default: each epoch; "
                                                  "diffusion 500)")
    t.add_argument("--ema-decay", type=float, help="classifiers, language models and diffusion: the moving average "
                   "of the weights that validates and is loaded (default 0.999; language models 0.99; 0: none)")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
    t.add_argument("--init-from", help="start from these weights: safetensors, or a PyTorch file (read weights-only)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    c = p.add_argument_group("image classifiers (cnn, cnn-small, mlp)")
    c.add_argument("--data-dir", help="where the dataset's files are (mnist, fashion-mnist, gtsrb, folder)")
    c.add_argument("--loss", help="cross-entropy (default) | bce (one class vs rest) | mse (regress the label)")
    c.add_argument("--positive-class", type=int, help="the class that --loss bce detects (default 0)")
    c.add_argument("--img-size", type=int, help="image side in pixels (default 48; diffusion: 28 for the MNIST "
                                                "family, 16 for digits)")
    c.add_argument("--val-fraction", type=float, help="share of training data held out for validation")
    c.add_argument("--grayscale", action="store_true", help="turn RGB images gray first, as the reference does")
    c.add_argument("--skip-bad-images", action="store_true", help="leave out image files that cannot be decoded "
                   "(counted on stderr) instead of listing them all in one error (classifiers and diffusion)")
    c.add_argument("--hidden", type=_ints, help="mlp hidden sizes, e.g. 256,128")
    c.add_argument("--activation", help="mlp activation: relu | sigmoid | tanh")
    c.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW tensors (channels-last is the default: 1.4x faster CNN evaluation on CPU)")
    lm = p.add_argument_group("language models (rnn, lstm, gru, gpt); --data-file, --tokenizer, --vocab-size, "
                              "--layers, --width, --heads and --dropout also serve the models below")
    lm.add_argument("--data-file", help="train on any UTF-8 text file (seq2seq: a source<TAB>target file)")
    lm.add_argument("--tokenizer", help="char | word | bpe (trained on the corpus); default char (bpe for "
                                        "transformer)")
    lm.add_argument("--vocab-size", type=int, help="bpe: vocabulary size (>= 257; default 512, 1000 for "
                    "transformer); word: keep the N most frequent, the rest <unk> (default 10000; 1000 for transformer)")
    lm.add_argument("--block-size", type=int, help="gpt: context window; rnn: truncated-BPTT length "
                                                   "(default: the variant's, 128 for rnn/lstm/gru)")
    lm.add_argument("--layers", type=int, help="number of layers (unet: residual blocks per level)")
    lm.add_argument("--heads", type=int, help="attention heads (gpt, transformer, unet)")
    lm.add_argument("--width", type=int, help="gpt, transformer: model width; rnn: hidden and embedding size; "
                                              "unet: base channels")
    lm.add_argument("--dropout", type=float, help="dropout probability (gpt, rnns, transformer, unet, asr)")
    lm.add_argument("--pos-encoding", help="gpt: learned | sinusoidal")
    lm.add_argument("--no-tie-weights", dest="tie_weights", action="store_const", const=False,
                    help="separate input embedding and output head weights")
    lm.add_argument("--no-bias", dest="bias", action="store_const", const=False,
                    help="gpt: no biases in the linear layers and LayerNorms (nanoGPT's bias=False)")
    lm.add_argument("--sampling",
                    help="gpt: how training windows are drawn: shuffled (default; each epoch, every token once) or "
                         "random (each window at its own random offset, as nanoGPT)")
    lm.add_argument("--eval-tokens", type=int, help="validation tokens per evaluation during training (default "
                                                    "32768; 0: all); the final report uses all")
    s2s = p.add_argument_group("encoder–decoder (transformer): --data numbers or --data-file PAIRS.tsv")
    s2s.add_argument("--langs", help="numbers: languages (num2words codes; default pt,es,pl,it,sr,en)")
    s2s.add_argument("--train-pairs", type=int, help="numbers: training pairs per language and direction (40000)")
    s2s.add_argument("--val-numbers", type=int, help="numbers: held-out validation numbers (100)")
    s2s.add_argument("--test-numbers", type=int, help="numbers: held-out test numbers (5000)")
    s2s.add_argument("--separate-vocab", action="store_true", help="one tokenizer per side (default: shared)")
    s2s.add_argument("--label-smoothing", type=float, help="default 0.1")
    s2s.add_argument("--max-len", type=int, help="longest sequence in tokens (default 128)")
    sp = p.add_argument_group("speech recognition (asr-lstm, asr-gru, asr-lstm-small, asr-gru-small): --data "
                              "spoken-numbers or --data-file MANIFEST.csv (audio_path,transcript); also --langs, "
                              "--val-numbers, --test-numbers, --val-fraction, --layers, --width, --dropout")
    sp.add_argument("--train-clips", type=int, help="spoken-numbers: training clips per language (4000)")
    sp.add_argument("--test-fraction", type=float, help="manifest: share of the lines held out for testing (0.05)")
    sp.add_argument("--n-mels", type=int, help="log-mel bands (80; small variants 40)")
    dif = p.add_argument_group("text-to-image diffusion (train diffusion | unet | unet-small | unet-fast | unet-tiny): "
                               "--data fashion-mnist | mnist | digits | CAPTIONS.csv")
    dif.add_argument("--timesteps", type=int, help="diffusion steps T of the forward process (1000)")
    dif.add_argument("--beta-schedule", help="linear (default) | cosine")
    dif.add_argument("--cond-drop", type=float, help="probability of training on the empty caption "
                                                     "(classifier-free guidance; 0.1)")
    dif.add_argument("--snr-gamma", type=float, help="Min-SNR-γ loss weight min(SNR, γ)/SNR (faster "
                                                     "convergence; 5); 0: plain ε MSE")
    dif.add_argument("--text-encoder", help="own (default: a Transformer trained with the model) or a local "
                                            "sentence-transformers folder (frozen)")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy, loss, per-class figures)")
    S = argparse.SUPPRESS  # family options reach evaluate() only when given: a foreign one is an error
    c = p.add_argument_group("classifier runs")
    c.add_argument("--data", default=S, help="evaluate on another dataset with the same classes (report in "
                                             "RUN/eval-DATA/)")
    c.add_argument("--data-dir", default=S, help="other files of the run's dataset (report in RUN/eval-DIR/)")
    d = p.add_argument_group("diffusion runs: sample quality")
    d.add_argument("--classifier", default=S, help="a dlforge classifier run on the same dataset: prompt accuracy "
                                                   "and Fréchet distance of its penultimate features")
    d.add_argument("--n", type=int, default=S, help="images to generate (default 1000)")
    d.add_argument("--sampler", default=S, help="ddim (default) | ddpm")
    d.add_argument("--steps", type=int, default=S, help="denoising steps (default: ddim 50, ddpm all)")
    d.add_argument("--guidance", type=float, default=S, help="classifier-free guidance scale (default 3)")
    d.add_argument("--eta", type=float, default=S, help="ddim: 0 deterministic (default) ... 1")
    d.add_argument("--seed", type=_seed, default=S)
    s = p.add_argument_group("seq2seq and speech runs")
    s.add_argument("--beam", type=int, default=S, help="beam width (default 1: greedy)")
    s.add_argument("--length-penalty", type=float, default=S, help="GNMT length penalty α for beams (default 1)")
    s.add_argument("--limit", type=int, default=S, help="the first N test pairs (speech: clips) of each direction "
                                                        "(language) only")
    s.add_argument("--lm", default=S, help="speech: a character language-model run for shallow fusion")
    s.add_argument("--lm-weight", type=float, default=S, help="speech: weight of the language model (default 0.5)")
    s.add_argument("--lm-bonus", type=float, default=S, help="speech: bonus per character with --lm (default 0)")


def _add_decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=1, help="seq2seq: beam width (1: greedy)")
    p.add_argument("--length-penalty", type=float, help="seq2seq, with --beam 2 or more: GNMT length penalty α "
                                                        "(default 1)")


def _add_translate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a seq2seq run directory")
    p.add_argument("text", nargs="+", help="the text(s) to translate, e.g. 1234")
    p.add_argument("--to", help="the target: a language code (pt, es, pl, it, sr, en) or digits")
    _add_decoding(p)
    p.add_argument("--attention-map", help="write the first text's cross-attention, every head, to this PNG")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory")
    p.add_argument("images", nargs="+", help="image files (any size, any colour mode)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a language-model run directory")
    p.add_argument("--prompt", help="the text to continue (default: a newline; a space where the training text "
                                    "had no newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy; <1 sharper; >1 more random")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens with this probability")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--stream", action="store_true", help="write the text as it is produced")
    p.add_argument("--no-cache", action="store_true", help="gpt: recompute the whole context every token")
    p.add_argument("--device", default="auto")


def _add_next(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a language-model run directory")
    p.add_argument("text", help="the text so far, e.g. 'the cat sat on the'")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


def _add_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model (dlforge models)")
    p.add_argument("--img-size", type=int, help="image classifiers: the input side (default 48)")
    p.add_argument("--in-channels", type=int, help="image classifiers: input channels (default 3)")
    p.add_argument("--num-classes", type=int, help="image classifiers: classes (default 10)")


def _add_backprop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="digits | mnist | fashion-mnist | moons")
    p.add_argument("--data-dir")
    p.add_argument("--hidden", type=_ints, default=(64, 32), help="hidden sizes, e.g. 64,32")
    p.add_argument("--activation", default="relu", help="relu | sigmoid | tanh")
    p.add_argument("--optimizer", default="adam", help="adam | sgd")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, help="sgd's momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--dtype", default="float32", help="float32 | float64")
    p.add_argument("--trace", action="store_true", help="show the four steps of backpropagation for one step")
    p.add_argument("--json", action="store_true", help="end with one JSON line (loss, accuracy, ...)")


COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "train": (_add_train, cmd_train, "train a model on a dataset; evaluate it at the end"),
    "eval": (_add_eval, cmd_eval, "evaluate a run's best checkpoint (test set; language models: validation text)"),
    "predict": (_add_predict, cmd_predict, "classify image files with a trained run"),
    "generate": (_add_generate, cmd_generate, "continue a prompt with a trained language model"),
    "next": (_add_next, cmd_next, "the most likely next tokens after a text, with probabilities"),
    "translate": (_add_translate, cmd_translate, "translate with a trained encoder–decoder (greedy or beam search)"),
    "transcribe": (_add_transcribe, cmd_transcribe, "transcribe sound files with a trained speech recognizer"),
    "sample": (_add_sample, cmd_sample, "draw images for text prompts with a trained diffusion run"),
    "noise": (_add_noise, cmd_noise, "show the diffusion forward process on an image"),
    "serve": (_add_serve, cmd_serve, "serve runs over HTTP (API at /v1, docs at /docs) with a web playground at /"),
    "export": (_add_export, cmd_export, "write a run as ONNX graphs + model.json, checked with ONNX Runtime"),
    "summary": (_add_summary, cmd_summary, "per-layer output shapes and parameter counts"),
    "models": (lambda p: None, cmd_models, "list the registered models"),
    "data": (_add_data, cmd_data, "list the datasets; prepare (tokenize once, to disk) a text corpus"),
    "backprop": (_add_backprop, cmd_backprop, "train an MLP with the NumPy backpropagation engine"),
    "plot": (lambda p: (p.add_argument("what", choices=["activations"]),
                        p.add_argument("--out", default="activations.png")), cmd_plot, "draw activation functions"),
}


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """--help shows each option's default where it has one and its help does not already say it (predict's
    --top-k 3, generate's --temperature 0.8, serve's --port 8000, ... were never shown). A flag's default is no
    value, and train's options have none here (SUPPRESS): their help texts say them."""
    for a in p._actions:
        d = a.default
        if (a.option_strings and a.nargs != 0 and d not in (None, False, argparse.SUPPRESS)
                and "default" not in (a.help or "")):
            shown = str(",".join(map(str, d)) if isinstance(d, (list, tuple)) else d).replace("%", "%%")
            a.help = f"{a.help} (default {shown})" if a.help else f"default {shown}"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlforge", description="Train, evaluate and sample deep-learning models.")
    ap.add_argument("--version", action="version", version=f"dlforge {__import__('dlforge').__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           argument_default=argparse.SUPPRESS if name == "train" else None)
        add(p)
        _show_defaults(p)
        p.set_defaults(fn=fn)
    return ap


def _parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but an option the command does not know is named with the command and the nearest one it
    does (Python 3.11's argparse suggests nothing: `train --max-stpes` said only "unrecognized arguments")."""
    import difflib
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        known = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
        flag = next((u.split("=")[0] for u in unknown if u.startswith("--")), None)
        near = difflib.get_close_matches(flag, known, n=1) if flag else []
        ap.error(f"{args.command}: unrecognized arguments: {' '.join(unknown)}"
                 + (f" (did you mean {near[0]}?)" if near else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    from dlforge.perf import denormals_flushed, tune_allocator
    tune_allocator()
    # subnormals as zero before torch makes its worker threads, which inherit it (dlforge/perf.py); as they
    # were on return, for a program that calls main() itself
    with denormals_flushed():
        try:
            args = _parse(parser(), argv)
        except DlforgeError as e:  # an option's type that checks its range (--seed)
            print(f"dlforge: error: {e}", file=sys.stderr)
            return 2
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        args.fn(args)
    except DlforgeError as e:
        print(f"dlforge: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted:  # the trainer kept a checkpoint and said how to continue
        return 130
    except KeyboardInterrupt:
        print("dlforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dlforge generate … | head`: the reader has gone, as for any Unix filter (was a traceback)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush does not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a filter its reader left
    return 0
