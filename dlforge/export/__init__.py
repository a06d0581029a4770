"""Export a run so that it runs without dlforge: `export(handle, out, format="onnx", int8=False)` writes the
family's ONNX graphs, its tokenizer files and model.json (see onnx.py; the graphs in graphs.py)."""
from dlforge.export.onnx import FORMATS, export

__all__ = ["FORMATS", "export"]
