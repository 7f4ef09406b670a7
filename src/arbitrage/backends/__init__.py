"""Model backends: in-process transformers models (`hf`) and OpenAI-compatible servers."""
