"""Where actual state lives. Each backend implements the protocol in ``base``."""
