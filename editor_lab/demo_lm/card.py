"""The demo LM's model card: what it is, how it was built, and what it measurably knows."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import format_table

BUILD_COMMAND = "instructedit build-demo-lm --out checkpoints/demo-lm"
EVAL_COMMAND = "instructedit eval-lm --model checkpoints/demo-lm --json checkpoints/demo-lm/eval.json"


def write_model_card(out_dir: Path, summary: dict, result: dict) -> Path:
    """Write ``README.md`` (card) and ``eval.json`` (the numbers it quotes) into ``out_dir``."""
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = summary["config"]
    size_mb = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()) / 1e6
    card = f"""# Demo LM for InstructEdit Server

A small GPT-2 ({summary['parameters'] / 1e6:.2f}M parameters: {cfg['n_layer']} blocks,
width {cfg['n_embd']}, {cfg['n_head']} heads, vocabulary {summary['vocab_size']}) trained from
scratch on the generated demo knowledge world (seed {cfg['world_seed']}). It knows every fact of
the world's seen entities in every phrasing (templates reserved for evaluation included), by
name and by alias, holds an opinion on every topic, and has never seen the world's unseen
entities, whose facts are for knowledge insertion. The editor edits its last blocks' MLPs.

Loads with no custom code:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("checkpoints/demo-lm")
model = AutoModelForCausalLM.from_pretrained("checkpoints/demo-lm")
```

The tokenizer is byte-level BPE (`tokenizers`), so any text tokenises, including real-world
text and names the LM never saw; `<|endoftext|>` is BOS, EOS and padding, and the tokenizer
prepends it to every text, as every training row began with it. Its chat template
(`chat_template.jinja`) writes each turn of a conversation as a line of plain text: the LM
was never trained on conversations, and so a chat client's question reaches it as the plain
question it answers.

## Build

`{BUILD_COMMAND}` (world, tokenizer, training, evaluation, this card) took
{summary.get('build_seconds', summary['train_seconds']) / 60:.1f} min in all; training took
{summary['train_seconds'] / 60:.1f} min for {summary['steps']} steps on {summary['device']}
with {summary['threads']} threads ({summary['train_lines']} training lines per epoch,
{cfg['epochs']} epochs, final loss {summary['final_loss']:.3f}). Files in this folder:
{size_mb:.1f} MB.

## Measured (greedy decoding, every fact, every template)

Reproduce with `{EVAL_COMMAND}`; full per-template figures are in `eval.json`.

{format_table(result)}

"Unseen entities" compares how often the LM produces an unseen entity's true fact (every
template, by name) with always guessing each relation's most common object. Unseen facts
are drawn from the same distribution as the rest, so that guess is right with probability
equal to the object's share (the "expected" row, the acceptance baseline); its realised
rate on the small unseen sample and uniform guessing are shown for scale. The LM must be no
better than the baseline, or inserting those facts would mean nothing.
"""
    path = out_dir / "README.md"
    path.write_text(card)
    return path
