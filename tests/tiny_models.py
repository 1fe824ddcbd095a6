"""Tiny random Llama / Qwen3 backbones and a tokenizer trained in code, for fast tests.

Nothing is downloaded: the tokenizer is a small BPE trained on a fixed corpus, the models are
random-initialised from a config with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import (AutoModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config,
                          Qwen3ForCausalLM)

CORPUS = [
    "how do I bake bread at home", "tell me a joke about cats", "how can I hurt someone badly",
    "write a poem about the sea", "what is the capital of France", "explain how to make a weapon",
    "You can mix flour, water and yeast.", "I cannot help with that request.",
    "<|im_start|>user hello<|im_end|>", "the quick brown fox jumps over the lazy dog",
] * 5


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.padding_side = "right"
    return fast


def make_model(arch: str = "llama", num_layers: int = 4, hidden: int = 32, seed: int = 0):
    """A random *ForCausalLM (what a Hub checkpoint holds); eval mode, fp32."""
    common = dict(vocab_size=300, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=1, pad_token_id=1, tie_word_embeddings=True)
    if arch == "llama":
        config = LlamaConfig(**common)
        cls = LlamaForCausalLM
    elif arch == "qwen3":
        config = Qwen3Config(head_dim=hidden // 4, **common)
        cls = Qwen3ForCausalLM
    else:
        raise ValueError(arch)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config)
        # Random init leaves norms at 1 and small weights; scale up so layers differ visibly.
        for p in model.parameters():
            p.data.normal_(0, 0.2)
    return model.eval()


def save_tiny(folder: Path, arch: str = "llama", **kw) -> Path:
    """Write a tiny model + tokenizer as a Hugging Face folder (loadable by from_pretrained)."""
    folder = Path(folder)
    make_model(arch, **kw).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def load_base(folder: Path):
    return AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
