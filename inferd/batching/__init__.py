"""The dynamic batcher for tensor runtimes: a pure queue policy and its asyncio driver."""
