"""Dora: an asyncio platform that processes images and video on demand.

This package is the dependency-free core at the bottom of the import graph:
the fop grammar, entry encodings, signatures, the error tree, configuration,
the RPC frame codec and the storage and registry interfaces. Nothing here
imports a web framework, an imaging library or a cluster client.
"""

__version__ = "0.1.0"
