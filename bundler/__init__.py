"""ollama-bundle: carry Ollama models across air gaps as one signed bundle."""

__version__ = "0.1.0"
