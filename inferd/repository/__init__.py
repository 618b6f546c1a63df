"""Model repository: discovery of models and versions on disk, their config, and the model manager."""
