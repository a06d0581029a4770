"""CTC decoding: greedy on a known posterior, the exact score against a brute-force sum over alignments, prefix
beam search never worse than greedy on the model's own score (and better where best path and best labelling
differ), shallow fusion with a character language model run."""
import itertools
import math

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.evaluate import ctc


def _logp(rows) -> torch.Tensor:
    p = torch.tensor(rows, dtype=torch.float32)
    return (p / p.sum(-1, keepdim=True)).log()


def _collapse(path) -> tuple:
    out, prev = [], 0
    for b in path:
        if b != prev and b != 0:
            out.append(b)
        prev = b
    return tuple(out)


def test_greedy_merges_repeats_and_drops_blanks():
    # labels: 1 = a, 2 = b; frames a a - a b b - b: "a a b b" -> [1, 1, 2, 2]
    best = [1, 1, 0, 1, 2, 2, 0, 2]
    rows = [[0.05] * 3 for _ in best]
    for r, b in zip(rows, best):
        r[b] = 0.9
    assert ctc.greedy(_logp(rows)) == [1, 1, 2, 2]
    assert ctc.alignment(_logp(rows)) == best
    assert ctc.greedy(_logp([[0.9, 0.05, 0.05]] * 4)) == []


def test_ctc_score_is_the_sum_over_alignments():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 3, generator=g).log_softmax(-1)
    for labels in ([1], [1, 2], [2, 2], []):
        brute = sum(math.exp(sum(float(lp[t, s]) for t, s in enumerate(path)))
                    for path in itertools.product(range(3), repeat=4) if _collapse(path) == tuple(labels))
        assert ctc.ctc_score(lp, labels) == pytest.approx(math.log(brute), abs=1e-5)


def test_beam_search_finds_the_labelling_best_path_misses():
    # blank 0.6 / a 0.4 in both frames: best path "" (0.36) but p("a") = 0.24 + 0.24 + 0.16 = 0.64
    lp = _logp([[0.6, 0.4], [0.6, 0.4]])
    assert ctc.greedy(lp) == []
    assert ctc.prefix_beam_search(lp, beam=4) == [1]
    assert ctc.ctc_score(lp, [1]) == pytest.approx(math.log(0.64), abs=1e-6)


def test_beam_search_is_never_worse_than_greedy_on_the_model_score():
    g = torch.Generator().manual_seed(1)
    better = 0
    for case in range(40):
        T, V = 12 + case % 7, 4 + case % 3
        lp = (torch.randn(T, V, generator=g) * (1 + case % 4)).log_softmax(-1)  # from flat to peaky
        greedy, beam = ctc.greedy(lp), ctc.prefix_beam_search(lp, beam=8)
        assert ctc.ctc_score(lp, beam) >= ctc.ctc_score(lp, greedy) - 1e-5
        better += ctc.ctc_score(lp, beam) > ctc.ctc_score(lp, greedy) + 1e-3
    assert better >= 5  # it is not just returning greedy's answer


def test_shallow_fusion_with_a_char_lm_prefers_what_it_has_read(tmp_path, one_thread, capsys):
    import dlforge
    text = "cat\n" * 300
    lm = dlforge.train("lstm-small", text, out=tmp_path / "lm", max_steps=60, batch_size=8, block_size=16,
                       lr=1e-2, progress=False)
    labels = ["a", "c", "o", "t"]
    # c, then a vowel the acoustics slightly prefer as "o", then t: greedy says "cot"
    rows = [[0.1, 0.0, 0.9, 0.0, 0.0], [0.9, 0, 0.1, 0, 0], [0.05, 0.43, 0, 0.52, 0], [0.9, 0, 0, 0.1, 0],
            [0.1, 0, 0, 0, 0.9]]
    lp = _logp([[max(v, 1e-4) for v in r] for r in rows])
    decode = lambda ids: "".join(labels[i - 1] for i in ids)  # noqa: E731
    assert decode(ctc.greedy(lp)) == "cot"
    assert decode(ctc.prefix_beam_search(lp, beam=4)) == "cot"
    fused = ctc.CharLM(lm, labels)
    # characters the LM never read: before, silently scored as very unlikely (with none shared, every beam)
    assert f"dlforge: note: --lm {lm.path} never saw 1 of the recognizer's 4 characters, scored as very unlikely: " \
           f"'o'\n" in capsys.readouterr().err
    with pytest.raises(DlforgeError, match="its text has none of the recognizer's characters"):
        ctc.CharLM(lm, ["x", "y"])
    assert decode(ctc.prefix_beam_search(lp, beam=4, lm=fused, lm_weight=1.0)) == "cat"
    assert decode(ctc.prefix_beam_search(lp, beam=4, lm=fused, lm_weight=0.0)) == "cot"
