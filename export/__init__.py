"""usseg export: trained checkpoint -> plain inference graph -> ONNX -> TensorRT, with verification.

Runs from the repository checkout: ``python -m export RUN_DIR --format onnx``. Imports training and usseg_sdk.
"""
