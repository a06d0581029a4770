"""What the handles gained for the server: the first convolution's feature maps, a gpt's attention over a
prompt, the cross-attention as data, the denoising frames at any count and a stop between steps."""
import numpy as np
import pytest
import torch

import dlforge


def test_probabilities_and_top_classes_are_predict(handles):
    clf = handles["digits"]
    imgs = [np.full((8, 8), 40 * i, np.uint8) for i in range(5)]
    probs = clf.probabilities(clf.as_batch(imgs))
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
    assert clf.top_classes(probs, 3) == clf.predict(imgs, top_k=3)


def test_feature_maps_are_the_first_convolution_after_relu(handles):
    clf = handles["digits"]
    img = np.eye(8, dtype=np.uint8) * 255
    fm = clf.feature_maps(img, limit=4)
    assert fm["layer"] == "conv1" and fm["maps"].shape == (4, 16, 16)
    with torch.no_grad():
        raw = clf.model.conv1(clf._transform()(clf.as_batch([img])))[0, :4].relu()
    for m, r in zip(fm["maps"], raw):  # each map scaled to [0, 1] on its own
        want = (r - r.min()) / (r.max() - r.min()).clamp_min(1e-8)
        assert torch.allclose(m, want, atol=1e-5) and m.min() >= 0 and m.max() <= 1


def test_feature_maps_of_an_mlp_say_it_has_no_convolution(tmp_path):
    x = np.random.default_rng(0).random((60, 8, 8)).astype(np.float32)
    run = dlforge.train("mlp", data=(x, np.arange(60) % 3), out=tmp_path / "m", img_size=8, hidden=(8,),
                        max_steps=1, progress=False)
    with pytest.raises(dlforge.DlforgeError, match="mlp has no convolution"):
        run.feature_maps(x[0])


def test_gpt_attention_over_the_prompt_is_causal_and_normalised(handles):
    lm = handles["gpt"]
    a = lm.attention("the cat")
    assert a["tokens"] == list("the cat") and len(a["layers"]) == 2
    for m in a["layers"]:
        assert m.shape == (2, 7, 7)
        assert torch.allclose(m.sum(-1), torch.ones(2, 7), atol=1e-5)
        assert torch.all(m.triu(1) == 0)  # no token looks ahead
    with pytest.raises(dlforge.DlforgeError, match="text: the text is empty"):
        lm.attention("")


def test_cross_attention_as_data(handles):
    tr = handles["numbers"]
    out = tr.translate(["12"], to="en")[0]["translation"]
    a = tr.cross_attention("12", "en")
    assert a["translation"] == out and a["source_tokens"] == ["<en>", "1", "2"]
    assert a["output_tokens"][-1] == "</s>" and len(a["output_tokens"]) == len(out) + 1  # char tokenizer
    m = a["layers"][0]
    assert m.shape == (2, len(out) + 1, 3) and torch.allclose(m.sum(-1), torch.ones(m.shape[:2]), atol=1e-5)
    with pytest.raises(dlforge.DlforgeError, match="--to: unknown target"):
        tr.cross_attention("12", "xx", "twelve")


def test_sample_frames_and_a_callback_that_stops(handles):
    d = handles["unet"]
    imgs, traj = d.sample("a handwritten three", steps=6, trajectory=True, frames=4)
    assert len(traj) == 4 and [t for t, _ in traj] == sorted((t for t, _ in traj), reverse=True)
    assert np.array_equal(np.asarray(traj[-1][1][0]), np.asarray(imgs[0]))  # the last frame is the image
    calls = []

    def stop(i):
        calls.append(i)
        if i == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        d.sample("a handwritten three", steps=6, callback=stop)
    assert calls == [0, 1, 2]
