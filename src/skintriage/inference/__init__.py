"""Step 4, running a bundle on images: the batched forward pass (``batch``), the predictor that turns a photo
into a triage result (``predictor``), the engine choice (``backend``: torch or ONNX Runtime), ONNX export
(``export``) and its runner (``onnx_runner``), and Grad-CAM saliency (``explain``).
"""
