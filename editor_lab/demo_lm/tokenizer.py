"""Byte-level BPE tokenizer for the demo LM, trained with the ``tokenizers`` library.

Byte-level means any Unicode text tokenises (and round-trips), including names the LM
never saw and real-world text, as with GPT-2's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
# The demo LM was never trained on conversations: its chat template writes each turn as a
# line of plain text (an assistant's turn ends at its line end), so that a chat client's
# question reaches it as the plain question it was trained to answer.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
                 "{% if message['role'] == 'assistant' or not loop.last %}{{ '\\n' }}"
                 "{% endif %}{% endfor %}")
# The chat demo LM is trained on conversations in role-marked turns, much as Zephyr's: each
# turn is its role's marker, the text after a space (so a name is the same tokens as in
# plain text), then EOS, which also ends a reply.
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
TURNS_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096,
                        min_frequency: int = 2, *, turns: bool = False
                        ) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style tokenizer; ``<|endoftext|>`` is BOS (prepended), EOS and padding.

    With ``turns`` the role markers are special tokens and the chat template writes
    role-marked turns (``TURNS_CHAT_TEMPLATE``); otherwise it writes plain lines."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT, *(ROLE_MARKERS if turns else ())],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Every encoded text starts with BOS, as every training row does: without it the first
    # real token would sit where the LM has only ever seen BOS.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{END_OF_TEXT} $A",
                                      pair=f"{END_OF_TEXT} $A $B",
                                      special_tokens=[(END_OF_TEXT,
                                                       tok.token_to_id(END_OF_TEXT))]),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=256,
        chat_template=TURNS_CHAT_TEMPLATE if turns else CHAT_TEMPLATE,
    )
