"""``lame-serve``: an HTTP embedding and search service over one export artifact (torch-free).

Installed with the ``serve`` extra (Starlette, uvicorn, prometheus-client); the base runtime
never imports this package. ``errors`` maps every failure to one HTTP status and one
OpenAI-shaped JSON body; ``schema`` parses and validates requests (limits, images, instructions);
``batching`` coalesces concurrent requests into model batches on one worker thread;
``documents`` owns the served index (search, writes, scheduled atomic saves); ``metrics`` the
Prometheus registry; ``app`` the ASGI factory (``create_app``, mountable without a socket);
``cli`` the ``lame-serve`` command line.
"""
