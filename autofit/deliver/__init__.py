"""Delivery: the verified ONNX export (`export`), its score through onnxruntime (`evaluate`),
the best model so far while a run goes on (`best`), and the model in use (`predict`)."""
