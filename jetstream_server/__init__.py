"""jetstream-server: an asyncio-native file transfer daemon that speaks JetStream's API."""

__version__ = "0.1.0"
__all__ = ["__version__"]
