"""The embedded default model: a tiny Qwen3-architecture model and its tokenizer.

`builtin:tiny` (dense) and `builtin:tiny-moe` (mixture of experts) let every recipe run on
a laptop in minutes and let the test-suite exercise the whole pipeline in seconds. Both
are built offline from nothing: a byte-level BPE tokenizer trained on the built-in
synthetic tasks (plus a fixed block of chat scaffolding and English), and a randomly
initialised model of 0.92M (dense) / 1.51M (MoE, 0.63M active per token) parameters.
The build is deterministic: the same seed and corpus give byte-identical
`model.safetensors` and `tokenizer.json`, so a cached build and a fresh one are
interchangeable.

The tokenizer follows the Qwen3 instruct conventions, so code written against the tiny
model runs unchanged on a real Qwen3: ChatML turns `<|im_start|>role\\n...<|im_end|>\\n`,
eos = `<|im_end|>`, pad = `<|endoftext|>`, no BOS prepended, `<think>` tags as single
tokens. Digits are split one per token (as Qwen does) so arithmetic sees each digit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3MoeConfig,
)
from transformers.utils import logging as hf_logging

from posttrain.config import ConfigError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
MASK = "<|mask|>"
VOCAB_MULTIPLE = 64
"""The model's vocabulary (embedding rows) is len(tokenizer) rounded up to this."""
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, THINK_OPEN, THINK_CLOSE, MASK]
"""Special tokens; training puts them first, so their ids are 0..5 in this order."""

# ChatML, as Qwen instruct models render it. Each message is a self-contained block and
# nothing depends on later messages, so rendering messages[:k] is a prefix of rendering
# messages[:k+1] -- data/chat.py locates assistant spans by relying on that.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Pre-tokenisation: split text into chunks that BPE merges never cross. Words keep one
# leading space, digits stand alone (so "123" is always 1 2 3 and arithmetic stays
# learnable), punctuation runs group (`": "`, `},`), and newlines plus the indentation
# before them group (YAML / pretty-printed JSON). Chunks are then mapped to the 256
# byte symbols, so any unicode string round-trips.
_SPLIT_PATTERN = (
    r"'(?:s|t|m|d|ll|ve|re)"
    r"| ?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

# Always added to the training corpus: role names, instructions and the connecting words
# the synthetic tasks are phrased with, so common words become single tokens even when
# the task texts alone would not merge them.
SCAFFOLD_TEXT = """\
system
user
assistant
tool
You are a helpful assistant. Answer the question. Think step by step, then give the final answer.
You are a careful assistant that writes structured data. Reply with the payload only, no extra text.
Convert these fields to JSON. Convert these fields to YAML. Convert these fields to CSV.
Convert these fields to TOML. Convert these fields to XML. Return a JSON object with the keys below.
Write the record as YAML. Write the rows as CSV with a header line. Use the exact field names.
Each value must have the stated type: string, integer, number, boolean, list, object or null.
The answer is a number. Put the final answer on the last line after four hash marks, like #### 42.
Solve the problem. Show your reasoning, then the answer. Let me think about this.
First, we find the total. Then we subtract what was spent. So the answer is the difference.
There are 12 apples in a basket and 5 more on the table. How many apples are there in all?
She buys 3 books at 4 dollars each. How much does she pay? 3 * 4 = 12. She pays 12 dollars.
A train travels 60 miles per hour for 2 hours. How far does it go? 60 * 2 = 120 miles.
If each box holds 8 items, how many boxes are needed for 96 items? 96 / 8 = 12 boxes.
He had 20 coins, gave away 7 and found 3. Now he has 20 - 7 + 3 = 16 coins.
The price is 15.50 and the discount is 10 percent, so the new price is 13.95.
The numbers are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 25, 50, 100, 1000.
name, age, city, email, id, title, price, count, date, active, tags, score, status, items
true, false, null, yes, no, none. The value is true. The list is empty. The object has two keys.
Please give the output in the requested format. Do not add comments or explanations.
The first field is a name, the second is a date, and the third is an amount in dollars.
What is the total? What is the sum of these numbers? What is the product? What is left?
Here is the data you asked for. The result is correct. The format is valid.
Hello! How can I help you today? Thank you. Sure, here it is. I am not sure; let me check.
It is a small model trained for tests, and it should learn to follow the format quickly.
Question: how many days are in 3 weeks? Answer: 3 * 7 = 21 days. #### 21
Input: {"name": "Ada", "age": 36, "active": true} Output: name: Ada, age: 36, active: true
"""


def _pretokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` (plus SCAFFOLD_TEXT), offline.

    The six SPECIAL_TOKENS get ids 0..5 and always encode to one id each; the 256 byte
    symbols are always in the vocabulary, so nothing is ever unknown. Training is
    deterministic for a given corpus (checked by tests: byte-identical tokenizer.json).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pretokenizer()
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact (leading spaces included), which
    # the assistant-span masking in data/chat.py reads through return_offsets_mapping.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [SCAFFOLD_TEXT, *corpus]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        mask_token=MASK,
        unk_token=None,
        additional_special_tokens=[IM_START, THINK_OPEN, THINK_CLOSE],
        model_max_length=1024,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(vocab_size: int, moe: bool = False, tokenizer=None) -> Qwen3Config | Qwen3MoeConfig:
    """A hand-sized Qwen3 (or Qwen3-MoE) config: 4 layers of width 128.

    Dense: 4 heads x 32 dims, 2 KV heads (grouped-query attention as in Qwen3), SwiGLU MLP
    of width 384; about 0.92M parameters at vocab 1024 with tied embeddings.
    MoE: the MLP becomes 8 experts of width 96 with top-2 routing (normalised, as
    Qwen3-MoE does); about 1.51M parameters, of which ~0.63M are active per token.
    Token ids come from `tokenizer` when given, else the SPECIAL_TOKENS order.
    """
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    if tokenizer is not None:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    common = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        hidden_act="silu",
        max_position_embeddings=1024,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        attention_dropout=0.0,
        use_cache=True,
        bos_token_id=ids[ENDOFTEXT],  # Qwen3 convention; never prepended by the tokenizer
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    if not moe:
        return Qwen3Config(intermediate_size=384, **common)
    cfg = Qwen3MoeConfig(
        intermediate_size=384,  # unused unless a layer is listed in mlp_only_layers
        moe_intermediate_size=96,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        output_router_logits=False,
        decoder_sparse_step=1,
        **{k: v for k, v in common.items() if k != "head_dim"},
    )
    # Qwen3MoeConfig has no head_dim argument in transformers 5; the attention reads it
    # with a hidden_size // num_heads fallback (= 32 here). Set it so both agree explicitly.
    cfg.head_dim = 32
    return cfg


def generation_config(tokenizer) -> GenerationConfig:
    """Stop on either end marker (end of turn, end of text), pad with <|endoftext|>."""
    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END),
                      tokenizer.convert_tokens_to_ids(ENDOFTEXT)],
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )


def default_corpus() -> list[str]:
    """Texts of the built-in synthetic tasks (imported lazily: data/ may import models/)."""
    from posttrain.data.tasks import tokenizer_corpus

    return tokenizer_corpus()


def _build_into(directory: Path, moe: bool, seed: int, corpus: Iterable[str] | None) -> None:
    """Write tokenizer + float32 model files into an existing empty `directory`."""
    tokenizer = build_tokenizer(default_corpus() if corpus is None else corpus)
    # Round the embedding up to a multiple of 64, as real checkpoints do (Qwen3: 151936
    # rows for 151669 tokens): logits then have more columns than the tokenizer has
    # tokens, on the tiny model too, so code that confuses the two fails in tests.
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config = tiny_config(vocab_size, moe=moe, tokenizer=tokenizer)
    # Seed the global generator around init only, restoring it afterwards so building a
    # model in the middle of a run does not change that run's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = generation_config(tokenizer)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per build is noise
    try:
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _publish(tmp: Path, out: Path, overwrite: bool) -> Path:
    """Atomically move a finished build `tmp` to `out`.

    With overwrite=False an existing `out` wins (another process built it first) and
    `tmp` is discarded; a directory at `out` is always complete, because it only ever
    appears by rename.
    """
    if out.exists() and overwrite:
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, out)
    except OSError:
        # rename onto a non-empty directory fails (EEXIST/ENOTEMPTY): someone else won.
        shutil.rmtree(tmp, ignore_errors=True)
        if not out.is_dir():
            raise
    return out


def build_tiny(out_dir: str | os.PathLike, moe: bool = False, seed: int = 0,
               corpus: Iterable[str] | None = None, overwrite: bool = True) -> Path:
    """Build the tiny model + tokenizer into `out_dir` and return its path.

    corpus: tokenizer training texts; None = the built-in task corpus (default_corpus()).
    The build happens in a hidden temporary directory next to `out_dir` and is renamed
    into place, so readers never see a half-written model.
    """
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published model should be readable
    try:
        _build_into(tmp, moe=moe, seed=seed, corpus=corpus)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, out, overwrite=overwrite)


# name -> (cache subdirectory, moe). Bump the version tag whenever the architecture,
# the scaffold text or the task corpus changes, so stale caches are not reused.
BUILTINS: dict[str, tuple[str, bool]] = {
    "tiny": ("tiny-v1", False),
    "tiny-moe": ("tiny-moe-v1", True),
}


def _source_fingerprint() -> str:
    """Hash of the sources a build depends on (this file, the tasks and their serializers),
    so that changing the corpus or the architecture never reuses a stale cached model."""
    from posttrain.data import formats, tasks
    h = hashlib.sha256()
    for mod_file in (__file__, tasks.__file__, formats.__file__):
        h.update(Path(mod_file).read_bytes())
    return h.hexdigest()[:10]


def cache_dir() -> Path:
    """Where built-in models are cached: $POSTTRAIN_CACHE, else ~/.cache/posttrain."""
    return Path(os.environ.get("POSTTRAIN_CACHE") or "~/.cache/posttrain").expanduser()


def resolve_builtin(path: str) -> str:
    """Map `builtin:NAME` to a cached model directory (built on first use); else `path`.

    Safe under concurrent first use: each process builds into its own temporary
    directory and the first rename wins; the others discard their copy.
    """
    if not path.startswith("builtin:"):
        return path
    name = path[len("builtin:"):]
    if name not in BUILTINS:
        known = ", ".join(f"builtin:{k}" for k in BUILTINS)
        raise ConfigError(f"model.path: unknown built-in model {path!r}; known: {known}")
    subdir, moe = BUILTINS[name]
    out = cache_dir() / f"{subdir}-{_source_fingerprint()}"
    if not out.is_dir():
        build_tiny(out, moe=moe, seed=0, corpus=None, overwrite=False)
    return str(out)
