"""Readers of model file formats, header only (never the tensor data): safetensors and GGUF."""
