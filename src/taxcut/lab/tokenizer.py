"""A character-level tokenizer saved as an ordinary Hugging Face tokenizer folder."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = string.digits + string.ascii_letters + " .,!?:;=+-'\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Bot: {{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Bot: {% endif %}"
)


def build_tokenizer():
    """One token per character (digits, letters, a little punctuation, space, newline) plus four special tokens."""
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL + list(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(".|\n"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_prompt(user: str) -> str:
    """A user turn rendered like the chat template, ready for the model to answer."""
    return f"User: {user}\nBot: "
