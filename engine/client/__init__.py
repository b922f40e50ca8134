"""The LM client.

The LM protocol, the OpenAI-compatible client, retries, the response cache,
usage, the wire format, connections and the HTTP/1.1 pool, and the scripted
FakeLM used by logic tests.
"""

__all__: tuple[str, ...] = ()
