"""A minimal MLServer inference runtime serving an ONNX classifier (for test_mlserver.py).

MLServer 1.7 ships no ONNX runtime: its runtimes are separate packages (scikit-learn,
XGBoost, LightGBM, MLflow, Hugging Face, ...), and the only one that could load an ONNX
file, mlserver-mlflow, would need the model packaged as an MLflow model plus all of
MLflow. MLServer's documented way to serve anything else is a custom runtime: a subclass
of ``mlserver.MLModel`` named by ``implementation`` in model-settings.json. This one
loads ``parameters.uri`` with onnxruntime (CPU), feeds it the request's first input
(FP32, NCHW) and answers one FP32 output ``logits`` of shape [n, classes].

It runs inside MLServer's own virtualenv (.venv-mlserver), never in tracemark's.
"""

import numpy as np
import onnxruntime as ort
from mlserver.codecs import NumpyCodec
from mlserver.model import MLModel
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        logits = self._session.run(None, {self._input: x})[0]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("logits", logits.astype(np.float32))],
        )
