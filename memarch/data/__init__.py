"""Datasets (plain PyTorch, no Lightning): synthetic recall tasks generated on the fly,
local text/JSONL, Hugging Face datasets, and the segment view for stateful training.

Every dataset item is ``{"input_ids": [T] int64, "labels": [T] int64}`` with
``labels[t]`` the token to predict after reading ``input_ids[:t+1]`` and
``IGNORE_INDEX`` (-100) where no loss is taken.
"""

from memarch.data.segments import StreamSegments
from memarch.data.synthetic import IGNORE_INDEX, MQAR, Passkey
from memarch.data.text import HFText, TextFiles
from memarch.data.tokenizers import ByteTokenizer, load_tokenizer

__all__ = ["IGNORE_INDEX", "MQAR", "Passkey", "TextFiles", "HFText", "StreamSegments",
           "ByteTokenizer", "load_tokenizer"]
