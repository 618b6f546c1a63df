"""Model code of the LLM engine: architecture config, layers, paged attention, weight loading.

`config` is plain Python (the repository can validate a model folder without torch); every other module
imports torch, and only the runner imports them. This package imports nothing on its own, so importing
`inferd.engine.model.config` stays torch-free.
"""
