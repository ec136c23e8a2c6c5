"""The forecasting model: training (train.py), evaluation (evaluate.py), ONNX export
(model.py) and the shipped forecaster.onnx. Offline programs only: runtime code reads
the .onnx file and never imports this package."""
