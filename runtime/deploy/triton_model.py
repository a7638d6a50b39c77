"""Triton Python-backend model: LaME preprocessing (copied as ``<name>_preprocess/1/model.py``).

Runs inside Triton's Python backend, whose environment needs ``pip install lame-embed`` (the
torch-free base install). The logic is ``lame_runtime.deploy.triton.preprocess_request``, tested
directly in the project; this file only moves tensors in and out of Triton.
"""

import os
from typing import Any

import triton_python_backend_utils as pb_utils

from lame_runtime.deploy.triton import IMAGE_INPUT, TEXT_INPUT, preprocess_request
from lame_runtime.inputs.preprocess import Preprocessor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        # tokenizer.json and preprocessor_config.json were copied beside this file.
        self.preprocessor = Preprocessor.from_dir(os.path.dirname(os.path.abspath(__file__)))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                texts = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT)
                images = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT)
                feed = preprocess_request(
                    self.preprocessor,
                    texts.as_numpy() if texts is not None else None,
                    images.as_numpy() if images is not None else None,
                )
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(name, value) for name, value in feed.items()]
                    )
                )
            except Exception as err:  # one bad request must not fail the others in the batch
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err)))
                )
        return responses
