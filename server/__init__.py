"""The lab's HTTP face: LAVA's XML-RPC at ``/RPC2``, the REST API, tokens and metrics.

One ASGI app (``server.app.create_app``). It reads the store and submits
through the coordinator's RPC like any other client; it owns no scheduling.
"""
