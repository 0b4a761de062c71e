"""Models: backbones with a new head and their checkpoints, export to TorchScript/ONNX, the engines that score
pixels (ONNX Runtime, torch), and int8 quantization."""
