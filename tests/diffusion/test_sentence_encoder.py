"""--text-encoder FOLDER: a frozen sentence-transformers model read from a local folder (nothing downloaded).
The model here is a 1-layer, 16-wide BERT with a 14-word vocabulary, built and saved on the spot with random
weights: the path through dlforge is the same as for a real pretrained one."""
import json
from pathlib import Path

import pytest

from dlforge.cli import main
from dlforge.train.checkpoint import load_checkpoint

st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed (pip install "
                                                         "sentence-transformers, part of the [test] extra)")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "digit", "handwritten", "zero", "one", "seven",
         "3", "7"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    import torch
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Pooling, Transformer
    base = tmp_path_factory.mktemp("st")
    (base / "bert").mkdir()
    (base / "bert" / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(base / "bert" / "vocab.txt"))
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32,
                                                          max_position_embeddings=32))
    bert.save_pretrained(base / "bert")
    tok.save_pretrained(base / "bert")
    model = st.SentenceTransformer(modules=[Transformer(str(base / "bert"), max_seq_length=16),
                                            Pooling(16, "mean")])
    model.save(str(base / "model"))
    return base / "model"


def test_train_and_sample_with_a_frozen_local_sentence_encoder(encoder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "unet-tiny", "--data", "digits", "--img-size", "8", "--text-encoder", str(encoder),
                 "--max-steps", "60", "--eval-every", "30", "--batch-size", "32", "--lr", "3e-3", "--timesteps", "200",
                 "--no-progress", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["kwargs"]["context_dim"] == 16 and cfg["data"]["text_encoder"] == str(encoder)
    tensors, _ = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert not any("text." in k for k in tensors)  # the encoder stays outside the model: frozen, not saved
    val = [json.loads(x)["val_loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert len(val) == 2 and val[1] < val[0] < 1.0  # ε̂ = 0 at initialisation scores 1
    capsys.readouterr()
    grid = tmp_path / "grid.png"
    # the encoder's own tokenizer reads the prompt: words outside the captions are fine (its [UNK] here)
    assert main(["sample", str(out), "--prompt", "a handwritten seven", "--prompt", "an unseen zebra", "--n", "2",
                 "--steps", "5", "--out", str(grid), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4 and grid.stat().st_size > 200
    assert main(["sample", str(out), "--prompt", " ", "--out", str(grid)]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
