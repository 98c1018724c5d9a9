"""Tiny language models built in code for the GPU executors' CPU tests (no model hub).

A byte-level BPE tokenizer is trained on a few sentences, a two-layer Llama gets random
(seeded) weights, and both are written with ``save_pretrained``: the executors get only
the directory, so their real loading code runs. One head of size 32 is a head size vLLM's
CPU attention accepts too.
"""

from __future__ import annotations

import os
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_CORPUS = [
    "describe a scene: a quiet harbour at dawn, boats and gulls, soft fog over the water.",
    "suggest a style: watercolour, muted palette, loose brush strokes, film grain.",
    "the quick brown fox jumps over the lazy dog. hello world! 0123456789",
    "user: hi there. assistant: hello, how can I help you today?",
]


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained here, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))  # byte-level: every byte has a token
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=2048,
    )  # fmt: skip
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_llama(path: str | os.PathLike[str], seed: int = 0) -> str:
    """Build and save a tiny LlamaForCausalLM (fp32) and its tokenizer under `path`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(Path(path))
    tok.save_pretrained(Path(path))
    return str(path)
