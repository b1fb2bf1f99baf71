"""Where the decoder layers are, read from tensor names: model-family knowledge kept as data, not code branches.

Each entry of :data:`LAYER_TEMPLATES` is a regex whose group ``index`` is the decoder layer number. The first
template that matches any tensor of a checkpoint is the decoder's; tensors it does not match are "outside the
layers" (embeddings, final norm, lm_head, ...). Adding a family means adding one line here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

# Most specific first: a multimodal model has vision-tower layers too, and only the language model's count.
LAYER_TEMPLATES: tuple[tuple[str, str], ...] = (
    (
        "multimodal language model (Llava, Gemma 3, Mistral 3)",
        r"^(?:model\.)?language_model\.(?:model\.)?layers\.(?P<index>\d+)\.",
    ),
    ("Llama, Mistral, Qwen2/3, Gemma, Phi-3, OLMo, DeepSeek", r"^model\.layers\.(?P<index>\d+)\."),
    ("GPT-2, GPT-J, BLOOM, Falcon, CodeGen", r"^transformer\.h\.(?P<index>\d+)\."),
    ("GPT-NeoX, Pythia", r"^gpt_neox\.layers\.(?P<index>\d+)\."),
    ("OPT", r"^model\.decoder\.layers\.(?P<index>\d+)\."),
    ("MPT", r"^transformer\.blocks\.(?P<index>\d+)\."),
    ("ChatGLM", r"^transformer\.encoder\.layers\.(?P<index>\d+)\."),
    ("Mamba", r"^backbone\.layers\.(?P<index>\d+)\."),
    ("RWKV", r"^rwkv\.blocks\.(?P<index>\d+)\."),
    ("bare decoder (no model prefix)", r"^(?:layers|h|blocks)\.(?P<index>\d+)\."),
)

# Outside the layers, these are input embeddings (token and position); the rest is the head side.
EMBEDDING_GLOBS: tuple[str, ...] = (
    "*embed_tokens.*",
    "*.wte.*",
    "*.wpe.*",
    "wte.*",
    "wpe.*",
    "*embed_in.*",
    "*word_embeddings*",
    "*embed_positions.*",
    "*.embeddings.*",
    "*.emb.*",
    "*.embedding.*",
)

# Among the embeddings, the token embedding (the one an output head can be tied to); position embeddings are not.
TOKEN_EMBEDDING_GLOBS: tuple[str, ...] = (
    "*embed_tokens.weight",
    "*.wte.weight",
    "wte.weight",
    "*embed_in.weight",
    "*word_embeddings.weight",
)

# Output projections that share storage with the input embedding when ``tie_word_embeddings`` is true.
TIED_HEAD_NAMES: tuple[str, ...] = ("lm_head.weight", "embed_out.weight", "output.weight")

# config.json keys that hold the number of decoder layers, by family.
LAYER_COUNT_KEYS: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class LayerLayout:
    """Which tensors belong to which decoder layer, and which tensors are embeddings."""

    family: str | None
    layer_of: dict[str, int]  # tensor name -> decoder layer index, for tensors inside the layers
    num_layers: int
    embedding_names: frozenset[str]
    token_embedding: str | None = None

    def is_embedding(self, tensor_name: str) -> bool:
        return tensor_name in self.embedding_names


def detect_layers(tensor_names: Iterable[str]) -> LayerLayout:
    """Find the decoder layers in ``tensor_names`` with the first template of :data:`LAYER_TEMPLATES` that fits."""
    names = list(tensor_names)
    for family, template in LAYER_TEMPLATES:  # noqa: B007 - the family that fits is kept after the loop
        pattern = re.compile(template)
        layer_of = {}
        for name in names:
            found = pattern.match(name)
            if found:
                layer_of[name] = int(found.group("index"))
        if layer_of:
            num_layers = max(layer_of.values()) + 1
            break
    else:
        family, layer_of, num_layers = None, {}, 0
    embeddings = frozenset(
        name for name in names if name not in layer_of and any(fnmatchcase(name, glob) for glob in EMBEDDING_GLOBS)
    )
    token = next((n for glob in TOKEN_EMBEDDING_GLOBS for n in sorted(embeddings) if fnmatchcase(n, glob)), None)
    return LayerLayout(family, layer_of, num_layers, embeddings, token)


def config_layer_count(config: dict) -> int | None:
    """The decoder layer count that ``config.json`` states, looking into ``text_config`` for multimodal models."""
    for scope in (config, config.get("text_config") or {}):
        for key in LAYER_COUNT_KEYS:
            if isinstance(scope.get(key), int):
                return scope[key]
    return None


def config_ties_embeddings(config: dict) -> bool:
    """Whether ``config.json`` says the output projection shares the input embedding (absent: no)."""
    for scope in (config, config.get("text_config") or {}):
        if "tie_word_embeddings" in scope:
            return bool(scope["tie_word_embeddings"])
    return False
