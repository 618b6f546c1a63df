"""inferd: one server that runs many models fast and governs who may spend what on them."""

__version__ = "0.1.0"
