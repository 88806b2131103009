"""Train a demo LM on the world's text, saved in Hugging Face format: the demo LM (a small
GPT-2 on plain text) or the chat demo LM (a small LLaMA on plain text and conversations)."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from ..world.corpus import chat_corpus, tokenizer_corpus, training_corpus
from ..world.generate import WorldConfig, build_world
from .tokenizer import train_bpe_tokenizer


@dataclass(frozen=True)
class DemoLMConfig:
    """Architecture and optimisation of a demo LM (defaults are the shipped demo LM).

    ``chat`` adds every question as a conversation in role-marked turns to the training
    text, and ships the template that writes them (``CHAT_DEMO_LM`` is the chat demo LM)."""

    architecture: Literal["gpt2", "llama"] = "gpt2"
    chat: bool = False
    seed: int = 0
    world_seed: int = 0
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256
    intermediate_size: int = 688  # LLaMA's SwiGLU width (GPT-2's MLP is 4 x n_embd)
    block_size: int = 128  # packed training sequence length
    batch_size: int = 16
    epochs: int = 18
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    vocab_size: int = 4096


CHAT_DEMO_LM = DemoLMConfig(architecture="llama", chat=True, epochs=7, lr=2e-3)


def pack_lines(lines: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int,
               rng: random.Random) -> torch.Tensor:
    """Shuffle lines and pack them into rows of ``block_size`` tokens.

    A line never straddles two rows, so every fact is seen whole. Lines are separated by
    EOS or by a newline at random, so the LM learns to answer after unrelated preceding
    text too (as an instruction-wrapped prompt has). Leftover room is filled with EOS.
    """
    order = lines[:]
    rng.shuffle(order)
    eos = tokenizer.eos_token_id
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    encoded = tokenizer(order, add_special_tokens=False)["input_ids"]
    rows: list[list[int]] = []
    row: list[int] = [eos]
    for ids in encoded:
        piece = ids + ([eos] if rng.random() < 0.5 else newline)
        if len(row) + len(piece) > block_size:
            rows.append(row + [eos] * (block_size - len(row)))
            row = [eos]
        row += piece
    rows.append(row + [eos] * (block_size - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def _lr_at(step: int, total: int, cfg: DemoLMConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _new_model(cfg: DemoLMConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if cfg.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.n_embd,
            intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
            max_position_embeddings=cfg.n_positions, tie_word_embeddings=True, **ids))
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, **ids))


def build_demo_lm(out_dir: Path, cfg: DemoLMConfig = DemoLMConfig(),
                  device: str = "cpu") -> dict:
    """World -> tokenizer -> trained LM in ``out_dir``; returns a training summary."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    world = build_world(WorldConfig(seed=cfg.world_seed))
    tokenizer = train_bpe_tokenizer(tokenizer_corpus(world), vocab_size=cfg.vocab_size,
                                    turns=cfg.chat)
    lines = training_corpus(world)
    if cfg.chat:
        # the template's own leading BOS is dropped: every packed row starts with one
        lines += [text.removeprefix(tokenizer.bos_token) for text in chat_corpus(
            world, lambda m: tokenizer.apply_chat_template(m, tokenize=False), rng)]

    model = _new_model(cfg, tokenizer).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    rows_per_epoch = len(pack_lines(lines, tokenizer, cfg.block_size, random.Random(0)))
    steps_per_epoch = math.ceil(rows_per_epoch / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    start = time.perf_counter()
    step = 0
    model.train()
    losses: list[float] = []
    with tqdm(total=total, desc=f"demo LM ({cfg.architecture})", unit="step") as bar:
        for epoch in range(cfg.epochs):
            data = pack_lines(lines, tokenizer, cfg.block_size, rng)
            perm = torch.randperm(len(data))
            for i in range(0, len(data), cfg.batch_size):
                batch = data[perm[i:i + cfg.batch_size]].to(device)
                for group in optim.param_groups:
                    group["lr"] = _lr_at(step, total, cfg)
                loss = model(input_ids=batch, labels=batch).loss
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    elapsed = time.perf_counter() - start

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    summary = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "train_lines": len(lines),
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "device": device,
        "threads": torch.get_num_threads(),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
