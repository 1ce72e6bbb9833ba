"""Data: the Example format, built-in synthetic tasks, record serializers (formats), file and
dataset sources, mixing.

    from posttrain.data import load_sources
    examples = load_sources(recipe.data.train, seed=recipe.data.seed)

Heavy readers (pyarrow, datasets) are imported only when a source needs them.
"""

from posttrain.data.example import Example, validate_messages
from posttrain.data.formats import FORMATS, SERIALIZERS, record_paths
from posttrain.data.mix import mix, mix_counts
from posttrain.data.sources import DataError, load_source, load_sources, row_to_example
from posttrain.data.tasks import SPLITS, TASKS, generate, register_task, tokenizer_corpus

__all__ = [
    "DataError", "Example", "FORMATS", "SERIALIZERS", "SPLITS", "TASKS", "generate",
    "load_source", "load_sources", "mix", "mix_counts", "record_paths", "register_task",
    "row_to_example", "tokenizer_corpus", "validate_messages",
]
