"""Tiny random-weight models of each supported family, and tokenizers for them."""

from __future__ import annotations

import torch
from tokenizers import processors
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from editor_lab.demo_lm.tokenizer import END_OF_TEXT, train_bpe_tokenizer
from editor_lab.world import WorldConfig, build_world
from editor_lab.world.corpus import tokenizer_corpus

FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama", "qwen2")


def small_tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(tokenizer_corpus(build_world(WorldConfig(seed=0))))


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """Like LLaMA's: prepends BOS to every encoded text."""
    tok = small_tokenizer()
    backend = tok.backend_tokenizer
    bos = tok.bos_token_id
    backend.post_processor = processors.TemplateProcessing(
        single=f"{END_OF_TEXT} $A", pair=f"{END_OF_TEXT} $A $B",
        special_tokens=[(END_OF_TEXT, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def tiny_model(family: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=128,
                                           **common))
    elif family == "gptj":
        model = GPTJForCausalLM(GPTJConfig(n_layer=4, n_embd=32, n_head=4, rotary_dim=4,
                                           n_positions=128, **common))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=4,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=128, **common))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48,
                                             num_hidden_layers=4, num_attention_heads=4,
                                             num_key_value_heads=2, max_position_embeddings=128,
                                             **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=48,
                                             num_hidden_layers=4, num_attention_heads=4,
                                             num_key_value_heads=2, max_position_embeddings=128,
                                             **common))
    else:
        raise ValueError(family)
    return model.eval()


def saved_tiny_model(folder, family: str, tokenizer: PreTrainedTokenizerFast):
    """A tiny ``family`` model and ``tokenizer`` saved in ``folder`` (an HF model folder)."""
    tiny_model(family, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
