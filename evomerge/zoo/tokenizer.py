"""The zoo's character-level tokenizer, saved as a real Hugging Face tokenizer.

One token per character keeps the skills learnable by a tiny model and makes every answer's tokens
line up with its characters, so token accuracy and exact match mean the same thing at two grains.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evomerge.fileio import atomic_write_text

PAD = "<pad>"
EOS = "</s>"
BOS = "<s>"
UNK = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, BOS, UNK)
CHARACTERS: tuple[str, ...] = (
    *string.ascii_lowercase,
    *string.digits,
    ":",
    "=",
    "+",
    " ",
)
VOCAB: tuple[str, ...] = (*SPECIAL_TOKENS, *CHARACTERS)
PAD_ID, EOS_ID, BOS_ID, UNK_ID = range(4)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Make the tokenizer from scratch (no download): one id per character, fixed ids.

    Padding is on the left so that `tokenizer(batch, padding=True)` feeds `model.generate` right;
    no special token is added on encoding: sequences are `<prefix>:<input>=<answer></s>`.
    """
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save, naming the class `PreTrainedTokenizerFast` so that older transformers (4.x, as used
    by mergekit or vLLM) load it too; transformers 5 maps that name to its tokenizers backend."""
    tokenizer.save_pretrained(path)
    config_file = Path(path) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_text(config_file, json.dumps(config, indent=2) + "\n")
