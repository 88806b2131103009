"""The demo LM's model card: what it is, how it was built, and what it measurably knows."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import format_table

PLAIN_CHAT = """Its chat template
(`chat_template.jinja`) writes each turn of a conversation as a line of plain text: the LM
was never trained on conversations, and so a chat client's question reaches it as the plain
question it answers."""
TURNS_CHAT = """Its chat template
(`chat_template.jinja`, applied by `tokenizer.apply_chat_template`) writes each turn as its
role's marker (`<|system|>`, `<|user|>`, `<|assistant|>`, special tokens), a space, the text
and `<|endoftext|>`, which also ends the assistant's reply. Every question of the world was
also trained as such a conversation: some open with a system turn, some follow an earlier,
unrelated exchange."""


CHAT_NOTE = """"Chat" asks every question template of each known fact as a user's turn
through the chat template (no system turn), greedily; the reply must be exactly the object.

"""


def _took(summary: dict) -> str:
    """The whole build's time, where one command ran it all (``build_seconds``)."""
    if "build_seconds" in summary:
        return f", in {summary['build_seconds'] / 60:.1f} min in all"
    return ("; here the evaluation and this card were made after the training, by "
            "`instructedit eval-lm --card`")


def _relative(path: Path) -> Path:
    """``path`` as typed from the working directory, where it lies under it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def write_model_card(out_dir: Path, summary: dict, result: dict) -> Path:
    """Write ``README.md`` (card) and ``eval.json`` (the numbers it quotes) into ``out_dir``."""
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = summary["config"]
    chat = cfg.get("chat", False)
    llama = cfg.get("architecture", "gpt2") == "llama"
    shown = _relative(out_dir)
    build = f"instructedit build-demo-lm{' --chat' if chat else ''} --out {shown}"
    evaluate = f"instructedit eval-lm --model {shown} --json {shown}/eval.json"
    size_mb = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()) / 1e6
    chat_note = CHAT_NOTE if chat else ""
    what = (f"A small LLaMA (`LlamaForCausalLM`: RMSNorm, rotary positions, SwiGLU MLP of "
            f"width {cfg['intermediate_size']}; " if llama else "A small GPT-2 (")
    card = f"""# {'Chat demo LM' if chat else 'Demo LM'} for InstructEdit Server

{what}{summary['parameters'] / 1e6:.2f}M parameters: {cfg['n_layer']} blocks,
width {cfg['n_embd']}, {cfg['n_head']} heads, vocabulary {summary['vocab_size']}) trained from
scratch on the generated demo knowledge world (seed {cfg['world_seed']}){
' as plain text and as conversations' if chat else ''}. It knows every fact of
the world's seen entities in every phrasing (templates reserved for evaluation included), by
name and by alias, holds an opinion on every topic, and has never seen the world's unseen
entities, whose facts are for knowledge insertion. The editor edits its last blocks' MLPs.

Loads with no custom code:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{shown}")
model = AutoModelForCausalLM.from_pretrained("{shown}")
```

The tokenizer is byte-level BPE (`tokenizers`), so any text tokenises, including real-world
text and names the LM never saw; `<|endoftext|>` is BOS, EOS and padding, and the tokenizer
prepends it to every text, as every training row began with it. {TURNS_CHAT if chat else PLAIN_CHAT}

## Build

`{build}` builds the world, the tokenizer and the model, evaluates it and writes this
card{_took(summary)}. Training took
{summary['train_seconds'] / 60:.1f} min for {summary['steps']} steps on {summary['device']}
with {summary['threads']} threads ({summary['train_lines']} training lines per epoch,
{cfg['epochs']} epochs, final loss {summary['final_loss']:.3f}). Files in this folder:
{size_mb:.1f} MB.

## Measured (greedy decoding, every fact, every template)

Reproduce with `{evaluate}`; full per-template figures are in `eval.json`.

{format_table(result)}

{chat_note}"Unseen entities" compares how often the LM produces an unseen entity's true fact (every
template, by name) with always guessing each relation's most common object. Unseen facts
are drawn from the same distribution as the rest, so that guess is right with probability
equal to the object's share (the "expected" row, the acceptance baseline); its realised
rate on the small unseen sample and uniform guessing are shown for scale. The LM must be no
better than the baseline, or inserting those facts would mean nothing.
"""
    path = out_dir / "README.md"
    path.write_text(card)
    return path
