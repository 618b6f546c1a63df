"""Runtime adapters: one small interface (`load`, `execute`, `unload`, `signature`) per kind of model."""
