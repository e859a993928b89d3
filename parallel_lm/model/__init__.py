from .config import PRESETS, VOCAB_SIZE, GPTConfig

__all__ = ["GPT", "GPTConfig", "PRESETS", "VOCAB_SIZE"]


def __getattr__(name):
    """``GPT`` is imported on first use (PEP 562): the shapes and presets above need no torch, so an entry point
    can parse and check its flags, and refuse bad ones, without paying torch's import."""
    if name == "GPT":
        from .gpt import GPT
        return GPT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
