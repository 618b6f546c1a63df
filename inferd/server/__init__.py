"""Transports: one module per wire protocol, and the server that hosts them."""
