"""Tiny tokenizers (and a random classifier) built in code for tests: no download, < 1 s each.

`build_byte_tokenizer`: one token per UTF-8 byte, so any real text tokenizes; stands in for the base
model's tokenizer in flow tests.
`build_tiny_tokenizer`: word level, for tests that need exact lengths.

Words "w0" ... "w{n-1}" and the role names are in the vocabulary; anything else is [UNK]. One word is
one token, and the chat template writes "role content " per message, so the templated length of a row
is simply: number of messages + number of words.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
SPECIAL = ["[UNK]", "[PAD]", "[CLS]", "[SEP]"]
ROLES = ["system", "user", "assistant"]


def words(start: int, count: int) -> str:
    """`count` distinct in-vocabulary words: "w{start} w{start+1} ..."."""
    return " ".join(f"w{i}" for i in range(start, start + count))


def build_byte_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|end|>", "<|pad|>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>", pad_token="<|pad|>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_tiny_tokenizer(directory: Path, vocab_words: int = 400):
    """Save a PreTrainedTokenizerFast with a chat template to `directory` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*SPECIAL, *ROLES])}
    for i in range(vocab_words):
        vocab[f"w{i}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_tiny_classifier(directory: Path) -> Path:
    """A randomly initialised 2-layer BERT text classifier (labels LABEL_0, LABEL_1) with its tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_tiny_tokenizer(directory, vocab_words=50)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def build_tiny_causal_lm(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama with the byte tokenizer: trains in milliseconds per step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory
