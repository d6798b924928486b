"""ONNX export: fixed-vocabulary (prompt baked in) and open-vocabulary graphs that ONNX Runtime runs with numpy
alone (see :mod:`openglip.export.onnx` and the standalone runner ``openglip_onnx.py``)."""

from .onnx import ExportResult, export_onnx, tokenizer_path

__all__ = ["ExportResult", "export_onnx", "tokenizer_path"]
