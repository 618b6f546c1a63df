"""Embedding tests: the real all-MiniLM-L6-v2 and tiny random BERTs, offline."""

from __future__ import annotations

import os

import torch
import transformers

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
torch.set_num_threads(min(4, torch.get_num_threads()))
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
