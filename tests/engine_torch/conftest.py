"""Torch-side engine tests: the runner and model against the `transformers` oracle."""

from __future__ import annotations

import torch
import transformers

# Tiny models gain nothing from more threads, and on a busy small machine OpenMP barriers spin.
torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
