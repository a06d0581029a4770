"""The `dlforge` command: one table of subcommands -> plain functions that fill config dataclasses.

dlforge's own errors (DlforgeError) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
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


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, default=float))


# ---------------------------------------------------------------- data, models, summary
def cmd_data(args: argparse.Namespace) -> None:
    from dlforge.data.images import DATASETS
    from dlforge.data.text import CORPORA, corpus_path
    print(f"{'name':<15} {'where':<48} description")
    for name, info in DATASETS.items():
        print(f"{name:<15} {info.where():<48} {info.description}")
    for name, c in CORPORA.items():
        where = str(corpus_path(name)) if corpus_path(name).is_file() else "downloaded on first use"
        print(f"{name:<15} {where:<48} {c.description} (text, for language models)")
    print(f"{'numbers':<15} {'made offline by num2words':<48} 0..999,999 in words <-> digits: pt, es, pl, it, "
          f"sr, en (pairs, for the transformer)")


def cmd_models(args: argparse.Namespace) -> None:
    from dlforge.registry import entries
    for e in entries():
        print(f"{e.name:<14} {e.task:<16} {e.doc}")


def cmd_summary(args: argparse.Namespace) -> None:
    from dlforge.recipes.classify import summary
    from dlforge.registry import create_model
    kw = {"in_channels": args.in_channels, "img_size": args.img_size, "num_classes": args.num_classes}
    model = create_model(args.model, **kw)
    rows, total = summary(model, (args.in_channels, args.img_size, args.img_size))
    print(f"{args.model}: input (B, {args.in_channels}, {args.img_size}, {args.img_size})")
    print(f"{'layer':<12} {'type':<12} {'output shape':<22} {'parameters':>12}")
    print("-" * 60)
    for name, kind, shape, n in rows:
        dims = "(B, " + ", ".join(map(str, shape[1:])) + ")"
        print(f"{name:<12} {kind:<12} {dims:<22} {n:>12,}")
    print("-" * 60)
    print(f"{'total':<47} {total:>12,}")


# ---------------------------------------------------------------- train / eval / predict
def _out_dir(args: argparse.Namespace) -> str:
    if args.out:
        p = Path(args.out)
        if not args.resume and (p / "checkpoints" / "last.safetensors").is_file():
            raise DlforgeError(f"--out {p}: already holds a run; pass --resume to continue it or choose another --out")
        return str(p)
    if not args.resume and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would number its own
        raise DlforgeError("--out: required under torchrun, so that every process writes the same run directory")
    data = args.data or (Path(args.data_file).stem if getattr(args, "data_file", None) else "data")
    base = Path("runs") / f"{args.model}-{data}"
    if args.resume:
        return str(base)
    p, n = base, 1
    while p.exists():
        n += 1
        p = base.with_name(f"{base.name}-{n}")
    return str(p)


def _train_config(args: argparse.Namespace):
    from dlforge.train.trainer import TrainConfig
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       optimizer=args.optimizer, seed=args.seed, device=args.device, precision=args.precision,
                       max_steps=args.max_steps, max_time=args.max_time, grad_clip=args.grad_clip,
                       lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio,
                       decay_steps=args.decay_steps, beta2=args.beta2, eval_every=args.eval_every,
                       tensorboard=args.tensorboard, progress=not args.no_progress, init_from=args.init_from)


def cmd_train(args: argparse.Namespace) -> None:
    from dlforge.recipes import classify
    from dlforge.registry import get_entry
    if args.model == "diffusion":  # `dlforge train diffusion`: the default text-to-image denoiser
        args.model = "unet"
    if get_entry(args.model).task == "denoise":
        return _train_diffusion(args)
    if get_entry(args.model).task == "language-model":
        return _train_lm(args)
    if get_entry(args.model).task == "seq2seq":
        return _train_seq2seq(args)
    args.data = args.data or "digits"
    args.img_size = 48 if args.img_size is None else args.img_size  # the reference's size
    tcfg = _train_config(args)
    dc = classify.DataConfig(name=args.data, data_dir=args.data_dir, val_fraction=args.val_fraction,
                             grayscale=args.grayscale)
    model_kw = {k: v for k, v in (("hidden", args.hidden), ("activation", args.activation)) if v is not None}
    out = _out_dir(args)
    if args.resume:  # the run's own recipe and data; only the budget (epochs, steps, time, lr) comes from here
        report = classify.resume(out, tcfg, args.model)
    else:
        cfg, data = classify.new_config(args.model, dc, tcfg, args.img_size, args.loss, args.positive_class,
                                        args.channels_last, model_kw)
        report = classify.train(cfg, data, out)
    if args.json:
        _print_json({k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix")})


def _train_lm(args: argparse.Namespace) -> None:
    from dlforge.recipes import language_model as lm
    tcfg = _train_config(args)
    if not args.data_file:
        args.data = args.data or "tinyshakespeare"
    names = (("n_layer", args.layers), ("n_head", args.heads), ("d_model", args.width), ("dropout", args.dropout),
             ("pos_encoding", args.pos_encoding), ("tie_weights", args.tie_weights))
    overrides = {k: v for k, v in names if v is not None}
    dc = lm.TextDataConfig(name=args.data, data_file=args.data_file, tokenizer=args.tokenizer or "char",
                           vocab_size=args.vocab_size or 512, val_fraction=args.val_fraction,
                           block_size=args.block_size or lm.default_block_size(args.model),
                           eval_tokens=args.eval_tokens or None)
    report = lm.train(args.model, dc, tcfg, overrides, _out_dir(args), args.resume)
    if args.json:
        _print_json(report)


def _train_seq2seq(args: argparse.Namespace) -> None:
    from dlforge.recipes import seq2seq as translate
    tcfg = _train_config(args)
    names = (("n_enc_layer", args.layers), ("n_dec_layer", args.layers), ("n_head", args.heads),
             ("d_model", args.width), ("dropout", args.dropout))
    overrides = {k: v for k, v in names if v is not None}
    dc = translate.PairDataConfig(
        name=None if args.data_file else (args.data or "numbers"), data_file=args.data_file, langs=args.langs,
        tokenizer=args.tokenizer or "bpe", vocab_size=args.vocab_size or 1000, separate_vocab=args.separate_vocab,
        train_per_direction=args.train_pairs, val_numbers=args.val_numbers, test_numbers=args.test_numbers,
        max_len=args.max_len)
    report = translate.train(args.model, dc, tcfg, overrides, _out_dir(args), args.resume, args.label_smoothing)
    if args.json:
        _print_json(report)


def _train_diffusion(args: argparse.Namespace) -> None:
    from dlforge.recipes import denoise as diffusion
    if args.eval_every is None:  # validation loss and a sample grid every 500 steps
        args.eval_every = 500
    tcfg = _train_config(args)
    data = args.data or "fashion-mnist"
    dc = diffusion.DiffusionDataConfig(name=data, data_dir=args.data_dir, img_size=args.img_size,
                                       val_fraction=args.val_fraction, text_encoder=args.text_encoder)
    overrides = {k: v for k, v in (("ch", args.width), ("n_head", args.heads), ("num_res_blocks", args.layers),
                                   ("dropout", args.dropout)) if v is not None}
    task = {"num_train_timesteps": args.timesteps, "beta_schedule": args.beta_schedule, "cond_drop": args.cond_drop,
            "ema_decay": args.ema_decay, "snr_gamma": args.snr_gamma}
    args.data = Path(data).stem if dc.is_csv else data  # the default run name: runs/unet-<data>
    report = diffusion.train(args.model, dc, tcfg, overrides, task, _out_dir(args), args.resume)
    if args.json:
        _print_json(report)


def _run_task(path: str) -> str:
    from dlforge.runs import Run
    return Run.open(path).config.get("task", {}).get("name", "classify")


def cmd_eval(args: argparse.Namespace) -> None:
    from dlforge.recipes import classify
    from dlforge.runs import Run
    if _run_task(args.run) == "denoise":
        from dlforge.recipes import denoise as diffusion
        report = diffusion.evaluate(Run.open(args.run, "denoise"), args.classifier, args.n or 1000, args.sampler,
                                    args.steps, args.guidance, args.eta, args.seed, args.device, quiet=args.json)
        if args.json:
            _print_json(report)
        return
    if _run_task(args.run) == "seq2seq":
        from dlforge.recipes import seq2seq as translate
        report = translate.evaluate(Run.open(args.run, "seq2seq"), args.beam, args.length_penalty, args.limit,
                                    args.device, quiet=args.json)
        if args.json:
            _print_json(report)
        return
    if _run_task(args.run) == "language-model":
        from dlforge.recipes import language_model as lm
        report = lm.evaluate(Run.open(args.run, "language-model"), device=args.device, quiet=args.json)
        if args.json:
            _print_json(report)
        return
    report = classify.evaluate(Run.open(args.run, "classify"), data_name=args.data, data_dir=args.data_dir,
                               quiet=args.json, device=args.device)
    if args.json:
        _print_json(report)


def cmd_predict(args: argparse.Namespace) -> None:
    from dlforge.recipes import classify
    from dlforge.runs import Run
    results = classify.predict(Run.open(args.run, "classify"), args.images, args.top_k, args.device)
    if args.json:
        _print_json({"predictions": results})
        return
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['class']:<20} {100 * t['probability']:6.2f}%")


# ---------------------------------------------------------------- language models
def cmd_generate(args: argparse.Namespace) -> None:
    from dlforge.recipes import language_model as lm
    from dlforge.runs import Run
    run = Run.open(args.run, "language-model")
    if args.stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    write = (lambda t: (sys.stdout.write(t), sys.stdout.flush())) if args.stream else None
    text = lm.generate(run, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                       write, not args.no_cache, args.device)
    print() if args.stream else print(text)


def cmd_next(args: argparse.Namespace) -> None:
    from dlforge.recipes import language_model as lm
    from dlforge.runs import Run
    top = lm.next_tokens(Run.open(args.run, "language-model"), args.text, args.top_k, args.device)
    if args.json:
        _print_json({"text": args.text, "next": top})
        return
    for t in top:
        print(f"{t['token']!r:<20} {100 * t['probability']:6.2f}%")


# ---------------------------------------------------------------- sequence to sequence
def cmd_translate(args: argparse.Namespace) -> None:
    from dlforge.recipes import seq2seq as translate
    from dlforge.runs import Run
    out = translate.translate(Run.open(args.run, "seq2seq"), args.text, args.to, args.beam, args.length_penalty,
                              args.attention_map, args.device)
    if args.json:
        _print_json({"translations": out} if len(out) > 1 else out[0])
        return
    for r in out:
        print(r["translation"])
    if args.attention_map:
        print(f"cross-attention: {args.attention_map}", file=sys.stderr)


# ---------------------------------------------------------------- diffusion
def cmd_sample(args: argparse.Namespace) -> None:
    from dlforge.recipes import denoise as diffusion
    from dlforge.runs import Run
    r = diffusion.sample(Run.open(args.run, "denoise"), args.prompt or [], args.n, args.sampler, args.steps,
                         args.guidance, args.eta, args.seed, args.out, args.trajectory, not args.no_ema, args.device)
    if args.json:
        _print_json(r)
        return
    print(f"{r['images']} images in {r['seconds']:.1f} s: {r['out']}" +
          (f"; reverse process: {r['trajectory']}" if args.trajectory else ""))


def cmd_noise(args: argparse.Namespace) -> None:
    from dlforge.recipes import denoise as diffusion
    r = diffusion.noise(args.image, args.out, args.frames, args.timesteps, args.beta_schedule, args.size, args.seed)
    print(f"forward process at t = {', '.join(map(str, r['timesteps']))}: {r['out']}")


def _add_sampling(p) -> None:
    p.add_argument("--sampler", default="ddim", help="ddim | ddpm")
    p.add_argument("--steps", type=int, help="denoising steps (default: ddim 50, ddpm all of the training timesteps)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1: none, 0: "
                                                               "unconditional)")
    p.add_argument("--eta", type=float, default=0.0, help="ddim: 0 deterministic ... 1 as random as ddpm")
    p.add_argument("--seed", type=int, default=0)


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
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------- the NumPy engine
def cmd_backprop(args: argparse.Namespace) -> None:
    from dlforge.scratch.train import BackpropConfig, run_backprop
    cfg = BackpropConfig(data=args.data, hidden=args.hidden, activation=args.activation, optimizer=args.optimizer,
                         lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, dtype=args.dtype, trace=args.trace,
                         json=args.json, data_dir=args.data_dir)
    run_backprop(cfg)


def cmd_plot(args: argparse.Namespace) -> None:
    from dlforge.scratch.plots import plot_activations
    plot_activations(args.out)
    print(f"wrote {args.out}")


# ---------------------------------------------------------------- the table
def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model (see `dlforge models`)")
    p.add_argument("--data", help="dataset name (see `dlforge data list`); default digits, or tinyshakespeare "
                                  "for language models")
    p.add_argument("--data-dir", help="where the dataset's files are (mnist, fashion-mnist, gtsrb, folder)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", default="adam", help="adam | adamw | sgd | rmsprop")
    p.add_argument("--loss", default="cross-entropy", help="cross-entropy | bce (one class vs rest) | mse (regress the label)")
    p.add_argument("--positive-class", type=int, default=0, help="the class that --loss bce detects")
    p.add_argument("--img-size", type=int, help="image side in pixels (default 48; diffusion: 28 for the MNIST "
                                                "family, 16 for digits)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of training images held out for validation")
    p.add_argument("--grayscale", action="store_true", help="turn RGB images gray first, as the reference does")
    p.add_argument("--hidden", type=_ints, help="mlp hidden sizes, e.g. 256,128")
    p.add_argument("--activation", help="mlp activation: relu | sigmoid | tanh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 (autocast)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW tensors (channels-last is the default: 1.4x faster CNN evaluation on CPU)")
    p.add_argument("--max-steps", type=int, help="stop at a clean checkpoint after N optimiser steps")
    p.add_argument("--max-time", type=float, help="stop at a clean checkpoint after this many minutes")
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    p.add_argument("--lr-schedule", default="constant", help="constant | cosine (decays to --min-lr-ratio·lr by the "
                   "end of --max-steps / --max-time / the epochs)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up over N steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    p.add_argument("--decay-steps", type=int, help="cosine length in steps (default: the training budget)")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's second-moment decay (0.99 for small LMs)")
    p.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps (default: each epoch)")
    lm = p.add_argument_group("language models (rnn, lstm, gru, gpt)")
    lm.add_argument("--data-file", help="train on any UTF-8 text file instead of a named corpus")
    lm.add_argument("--tokenizer", help="char | word | bpe (trained on the corpus); default char "
                                        "(bpe for transformer)")
    lm.add_argument("--vocab-size", type=int, help="bpe vocabulary size (>= 257; default 512, 1000 for transformer)")
    lm.add_argument("--block-size", type=int, help="gpt: context window; rnn: truncated-BPTT length "
                                                   "(default: the variant's, 128 for rnn/lstm/gru)")
    lm.add_argument("--layers", type=int, help="number of layers")
    lm.add_argument("--heads", type=int, help="gpt: attention heads")
    lm.add_argument("--width", type=int, help="gpt: model width; rnn: hidden and embedding size")
    lm.add_argument("--dropout", type=float)
    lm.add_argument("--pos-encoding", help="gpt: learned | sinusoidal")
    lm.add_argument("--no-tie-weights", dest="tie_weights", action="store_const", const=False,
                    help="separate input embedding and output head weights")
    lm.add_argument("--eval-tokens", type=int, default=32768,
                    help="validation tokens per evaluation during training (0: all); the final report uses all")
    s2s = p.add_argument_group("encoder–decoder (transformer): --data numbers or --data-file PAIRS.tsv")
    s2s.add_argument("--langs", default="pt,es,pl,it,sr,en", help="numbers: languages (num2words codes)")
    s2s.add_argument("--train-pairs", type=int, default=40000, help="numbers: training pairs per language and "
                                                                    "direction")
    s2s.add_argument("--val-numbers", type=int, default=100, help="numbers: held-out validation numbers")
    s2s.add_argument("--test-numbers", type=int, default=5000, help="numbers: held-out test numbers")
    s2s.add_argument("--separate-vocab", action="store_true", help="one tokenizer per side (default: shared)")
    s2s.add_argument("--label-smoothing", type=float, default=0.1)
    s2s.add_argument("--max-len", type=int, default=128, help="longest sequence in tokens")
    dif = p.add_argument_group("text-to-image diffusion (train diffusion | unet | unet-small | unet-fast | unet-tiny): "
                               "--data fashion-mnist | mnist | digits | CAPTIONS.csv")
    dif.add_argument("--timesteps", type=int, default=1000, help="diffusion steps T of the forward process")
    dif.add_argument("--beta-schedule", default="linear", help="linear | cosine")
    dif.add_argument("--cond-drop", type=float, default=0.1, help="probability of training on the empty caption "
                                                                  "(classifier-free guidance)")
    dif.add_argument("--ema-decay", type=float, default=0.999, help="moving average of the weights, used to sample")
    dif.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR-γ loss weight min(SNR, γ)/SNR "
                                                                   "(faster convergence); 0: plain ε MSE")
    dif.add_argument("--text-encoder", default="own", help="own (a Transformer trained with the model) or a local "
                                                          "sentence-transformers folder (frozen)")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATA, numbered if it exists)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
    p.add_argument("--init-from", help="start from these weights: safetensors, or a PyTorch file (read weights-only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the test figures")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory")
    p.add_argument("--data", help="evaluate on another dataset with the same classes")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy, loss, per-class figures)")
    d = p.add_argument_group("diffusion runs: sample quality")
    d.add_argument("--classifier", help="a dlforge classifier run on the same dataset: prompt accuracy and "
                                        "Fréchet distance of its penultimate features")
    d.add_argument("--n", type=int, help="images to generate (default 1000)")
    _add_sampling(d)
    _add_decoding(p)
    p.add_argument("--limit", type=int, help="seq2seq: the first N test pairs of each direction only")


def _add_decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=1, help="seq2seq: beam width (1: greedy)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="seq2seq: GNMT length penalty α for beams")


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
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy; <1 sharper; >1 more random")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens with this probability")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("model")
    p.add_argument("--img-size", type=int, default=48)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)


def _add_backprop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="digits | mnist | fashion-mnist | moons")
    p.add_argument("--data-dir")
    p.add_argument("--hidden", type=_ints, default=(64, 32), help="hidden sizes, e.g. 64,32")
    p.add_argument("--activation", default="relu", help="relu | sigmoid | tanh")
    p.add_argument("--optimizer", default="adam", help="adam | sgd")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
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
    "sample": (_add_sample, cmd_sample, "draw images for text prompts with a trained diffusion run"),
    "noise": (_add_noise, cmd_noise, "show the diffusion forward process on an image"),
    "summary": (_add_summary, cmd_summary, "per-layer output shapes and parameter counts"),
    "models": (lambda p: None, cmd_models, "list the registered models"),
    "data": (lambda p: p.add_argument("action", choices=["list"]), cmd_data, "list the datasets and where they are"),
    "backprop": (_add_backprop, cmd_backprop, "train an MLP with the NumPy backpropagation engine"),
    "plot": (lambda p: (p.add_argument("what", choices=["activations"]),
                        p.add_argument("--out", default="activations.png")), cmd_plot, "draw activation functions"),
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlforge", description="Train, evaluate and sample deep-learning models.")
    ap.add_argument("--version", action="version", version=f"dlforge {__import__('dlforge').__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(fn=fn)
    return ap


def main(argv: list[str] | None = None) -> int:
    from dlforge.perf import tune_allocator
    tune_allocator()
    args = parser().parse_args(argv)
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
    return 0
