"""CTC decoding: greedy (best path), prefix beam search, shallow fusion with a character language model, and
the exact score of a transcript under the model.

Posteriors are log-probabilities (T, V + 1) with the blank at index 0; a transcript is a list of label ids
1..V. The prefix beam search follows Hannun et al. (2014), "First-pass large vocabulary continuous speech
recognition using bi-directional recurrent DNNs", in log space: each prefix ℓ keeps p_b(ℓ) (its alignments
so far end in a blank) and p_nb(ℓ) (they end in ℓ's last label). Extending ℓ by a label c multiplies by
p(c | x)_t and, with shallow fusion, by p_LM(c | ℓ)^w; the final hypotheses also take p_LM(end | ℓ)^w and a
bonus β per label (against the language model's preference for short outputs). The score that ranks
prefixes is log(p_b + p_nb) + w·log p_LM(ℓ) + β·|ℓ|. Hand-written: no maintained Python package offers CTC
prefix search with a fusion hook over a PyTorch model (pyctcdecode needs KenLM n-grams).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

NEG = -1e30


def greedy(logp: torch.Tensor | np.ndarray) -> list[int]:
    """Best path: the most likely label per frame, repeats merged, blanks dropped."""
    best = np.asarray(torch.as_tensor(logp).argmax(-1))
    out, prev = [], 0
    for b in best.tolist():
        if b != prev and b != 0:
            out.append(b)
        prev = b
    return out


def alignment(logp: torch.Tensor) -> list[int]:
    """The frame-wise best label (0: blank), what the alignment plot draws."""
    return torch.as_tensor(logp).argmax(-1).tolist()


def ctc_score(logp: torch.Tensor, labels: list[int]) -> float:
    """log p(labels | x) = log Σ over every alignment that collapses to labels (the CTC forward algorithm)."""
    logp = torch.as_tensor(logp, dtype=torch.float32)
    if not labels:
        return float(logp[:, 0].sum())
    y = torch.tensor([labels], dtype=torch.long)
    loss = F.ctc_loss(logp[:, None], y, torch.tensor([len(logp)]), torch.tensor([len(labels)]), reduction="sum",
                      zero_infinity=False)
    return -float(loss)


class CharLM:
    """A character language model run (the language-model family, char tokenizer) as a scorer for the
    prefixes of a CTC beam: lm_logp(ℓ) = log p_LM(next char | "\\n" + ℓ) over the recognizer's labels and
    the end of the line. Recurrent models carry their state from parent to child; others re-read the prefix."""

    def __init__(self, handle, labels: list[str]):
        from dlforge.errors import DlforgeError
        tok = handle.tokenizer
        if tok.kind != "char":
            raise DlforgeError(f"--lm {handle.path}: a character language model is needed (tokenizer char), "
                               f"this one is {tok.kind}")
        if "\n" not in tok.index:
            raise DlforgeError(f"--lm {handle.path}: its text has no line breaks, so it cannot say where a "
                               f"transcript ends; train it on one transcript per line")
        self.model, self.device = handle.model, handle.device
        self.recurrent = bool(getattr(self.model, "recurrent", False))
        self.block_size = getattr(self.model, "block_size", None)
        # label i (1..V) -> LM id, or -1 where the LM never saw the character; the last column: end of line
        self.map = torch.tensor([tok.index.get(c, -1) for c in labels] + [tok.index["\n"]])
        unseen = [c for c in labels if c not in tok.index]
        if len(unseen) == len(labels):
            raise DlforgeError(f"--lm {handle.path}: its text has none of the recognizer's characters; train it on "
                               f"transcripts in the recognizer's languages")
        if unseen:  # before, silently scored as very unlikely: a model of another language steers every beam away
            print(f"dlforge: note: --lm {handle.path} never saw {len(unseen)} of the recognizer's {len(labels)} "
                  f"characters, scored as very unlikely: {' '.join(repr(c) for c in unseen[:20])}"
                  f"{' …' if len(unseen) > 20 else ''}", file=sys.stderr)
        self.start = tok.index["\n"]
        self.cache: dict[tuple[int, ...], tuple[object, np.ndarray]] = {}

    @torch.inference_mode()
    def _run(self, ids: torch.Tensor, state):
        logits, state = self.model(ids.to(self.device), state) if self.recurrent else self.model(ids.to(self.device))
        lp = logits[:, -1].float().log_softmax(-1).cpu()                   # (N, V_lm)
        known = self.map >= 0
        out = torch.full((lp.shape[0], len(self.map)), -30.0)              # an unseen character: very unlikely
        out[:, known] = lp[:, self.map[known]]
        return state, out.numpy()

    def scores(self, prefixes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """-> for each prefix, log p_LM over [labels 1..V, end]: index c - 1 for label c, -1 for the end."""
        todo = [p for p in dict.fromkeys(prefixes) if p not in self.cache]
        if todo and self.recurrent:
            for p in todo:  # parents first: a child continues its parent's state
                if p and p[:-1] not in self.cache:
                    self.scores([p[:-1]])
            states = [self.cache[p[:-1]][0] if p else None for p in todo]
            last = torch.tensor([[int(self.map[p[-1] - 1]) if p and self.map[p[-1] - 1] >= 0 else self.start]
                                 for p in todo])
            if all(s is None for s in states):
                state, lp = self._run(last, None)
                parts = [_slice(state, i) for i in range(len(todo))]
            else:
                states = [s if s is not None else _zeros_like(next(x for x in states if x is not None)) for s in states]
                state, lp = self._run(last, _cat(states))
                parts = [_slice(state, i) for i in range(len(todo))]
            for p, s, row in zip(todo, parts, lp):
                self.cache[p] = (s, row)
        for p in todo if not self.recurrent else []:
            ids = [self.start] + [int(self.map[c - 1]) if self.map[c - 1] >= 0 else self.start for c in p]
            ids = ids[-self.block_size:] if self.block_size else ids
            self.cache[p] = (None, self._run(torch.tensor([ids]), None)[1][0])
        return [self.cache[p][1] for p in prefixes]

    def reset(self) -> None:
        self.cache.clear()


def _slice(state, i: int):
    return tuple(s[:, i:i + 1] for s in state) if isinstance(state, tuple) else state[:, i:i + 1]


def _cat(states: list):
    if isinstance(states[0], tuple):
        return tuple(torch.cat([s[k] for s in states], 1) for k in range(len(states[0])))
    return torch.cat(states, 1)


def _zeros_like(state):
    return tuple(torch.zeros_like(s) for s in state) if isinstance(state, tuple) else torch.zeros_like(state)


def prefix_beam_search(logp: torch.Tensor | np.ndarray, beam: int = 8, lm: CharLM | None = None,
                       lm_weight: float = 0.5, lm_bonus: float = 0.0, prune: float = -12.0) -> list[int]:
    """The most likely transcript by prefix beam search (see the module's docstring). Per frame only labels
    within `prune` (log) of the frame's best are tried. Without a language model the best few prefixes and
    the greedy transcript are rescored exactly (ctc_score), so the result is never worse than greedy's on the
    model's own score."""
    lp = np.asarray(torch.as_tensor(logp, dtype=torch.float32))
    T, V = lp.shape
    w = lm_weight if lm is not None else 0.0
    if lm is not None:
        lm.reset()
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG]}          # ℓ -> [log p_b, log p_nb]
    lm_score: dict[tuple[int, ...], float] = {(): 0.0}                    # w·log p_LM(ℓ)
    for t in range(T):
        row = lp[t]
        cands = [c for c in np.flatnonzero(row >= row.max() + prune).tolist() if c != 0]
        lm_rows = dict(zip(beams, lm.scores(list(beams)))) if lm is not None and cands else {}
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, k, value):
            cur = nxt.setdefault(prefix, [NEG, NEG])
            cur[k] = np.logaddexp(cur[k], value)

        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            add(prefix, 0, total + row[0])                                # a blank: ℓ stays
            for c in cands:
                ext = prefix + (c,)
                if ext not in lm_score:
                    lm_score[ext] = lm_score[prefix] + (w * float(lm_rows[prefix][c - 1]) if lm is not None else 0.0)
                if prefix and prefix[-1] == c:
                    add(prefix, 1, pnb + row[c])                          # c repeated without a blank: still ℓ
                    add(ext, 1, pb + row[c])                              # a new c after a blank
                else:
                    add(ext, 1, total + row[c])
        rank = lambda p: np.logaddexp(*nxt[p]) + lm_score[p] + lm_bonus * len(p)  # noqa: E731
        beams = {p: nxt[p] for p in sorted(nxt, key=rank, reverse=True)[:beam]}
    if lm is not None:
        ends = dict(zip(beams, lm.scores(list(beams))))
        final = lambda p: np.logaddexp(*beams[p]) + lm_score[p] + w * float(ends[p][-1]) + lm_bonus * len(p)  # noqa: E731
        return list(max(beams, key=final))
    candidates = list(dict.fromkeys([*sorted(beams, key=lambda p: np.logaddexp(*beams[p]), reverse=True)[:4],
                                     tuple(greedy(lp))]))
    return list(max(candidates, key=lambda p: ctc_score(torch.from_numpy(lp), list(p))))
