"""ONNX model server: serves ``model.onnx`` (or the single ``*.onnx`` file) with onnxruntime.

Inputs and outputs are the graph's own tensors (V2 metadata lists them with their datatypes and
shapes, ``-1`` for dynamic dimensions):

- V2: request inputs are matched to graph inputs by name (a single-input graph also takes a
  single request input of any name); values are cast to the graph input's type when numpy calls
  the cast ``same_kind`` (FP64 data for an FP32 input, ...), anything else is a 400. The response
  holds every tensor output of the graph, by name, unless the request names ``outputs``.
- V1 (``{"instances": [...]}``) needs a single-input graph; ``predictions`` is the first output.

Non-tensor outputs (a ZipMap's list of dicts: convert scikit-learn classifiers with
``options={"zipmap": False}``) are not served. In the prediction histogram the first output is
the primary one (``output=""`` when it has one value per row).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve.protocol.infer_type import InferRequest
from kserve.utils.utils import get_predict_input

from .base import SlipwayModel, Tensor, run_server

# onnxruntime's type strings -> (V2 datatype, numpy dtype)
ONNX_TYPES: dict[str, tuple[str, Any]] = {
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(string)": ("BYTES", np.object_),
}


def _shape(dims: Sequence[Any] | None) -> tuple[int, ...]:
    # Dynamic dimensions come as None or a symbolic name ("batch_size", "N").
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (dims or ()))


class ONNXModel(SlipwayModel):
    model_files = ("model.onnx",)
    named_outputs = True

    def load_file(self, path: Path) -> Any:
        options = ort.SessionOptions()
        if self.nthread > 0:
            options.intra_op_num_threads = self.nthread
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        tensors = [o for o in session.get_outputs() if o.type in ONNX_TYPES]
        if not tensors:
            raise ValueError("the graph has no tensor output to serve")
        if any(i.type not in ONNX_TYPES for i in session.get_inputs()):
            raise ValueError("the graph has an input that is not a tensor")
        return session

    @property
    def primary_output(self) -> str:  # type: ignore[override]
        return self.outputs()[0].name if self.impl is not None else ""

    def _tensors(self, args: Sequence[Any]) -> list[Tensor]:
        return [
            Tensor(a.name, ONNX_TYPES[a.type][0], _shape(a.shape))
            for a in args
            if a.type in ONNX_TYPES
        ]

    def inputs(self) -> list[Tensor]:
        return self._tensors(self.impl.get_inputs())

    def outputs(self) -> list[Tensor]:
        return self._tensors(self.impl.get_outputs())

    def default_outputs(self) -> list[str]:
        return [t.name for t in self.outputs()]

    def decode_inputs(self, payload: dict[str, Any] | InferRequest) -> dict[str, np.ndarray]:
        graph = self.impl.get_inputs()
        if not isinstance(payload, InferRequest):
            if len(graph) != 1:
                names = ", ".join(g.name for g in graph)
                raise ValueError(f"V1 requests need a single-input model; this one has {names}")
            return {graph[0].name: self._cast(get_predict_input(payload), graph[0])}
        given = {i.name: i for i in payload.inputs}
        if len(graph) == 1 and len(payload.inputs) == 1:
            return {graph[0].name: self._cast(payload.inputs[0].as_numpy(), graph[0])}
        missing = [g.name for g in graph if g.name not in given]
        if missing:
            raise ValueError(f"missing input(s) {', '.join(missing)}")
        return {g.name: self._cast(given[g.name].as_numpy(), g) for g in graph}

    @staticmethod
    def _cast(value: Any, arg: Any) -> np.ndarray:
        arr = np.asarray(value)
        target = np.dtype(ONNX_TYPES[arg.type][1])
        if arr.dtype == target:
            return arr
        if target.kind == "O" or not np.can_cast(arr.dtype, target, casting="same_kind"):
            raise ValueError(f"input {arg.name} is {arg.type}: cannot take {arr.dtype} values")
        return arr.astype(target)

    def compute(self, inputs: Any, outputs: Sequence[str]) -> list[np.ndarray]:
        feeds = inputs if isinstance(inputs, Mapping) else self.decode_inputs({"instances": inputs})
        names = list(dict.fromkeys(outputs))
        try:
            results = self.impl.run(names, dict(feeds))
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, TypeError) as e:
            raise ValueError(str(e)) from e  # wrong rank, shape or type: bad input
        by_name = dict(zip(names, results, strict=True))
        return [by_name[n] for n in outputs]


def main() -> None:
    sys.exit(run_server(ONNXModel))


if __name__ == "__main__":
    main()
