"""The operator API: routes (routes.py) to handlers (handlers.py) answering from the read
model (views.py), served with auth and problem documents (server.py); its OpenAPI document
is generated from the route table (openapi.py).

Nothing is imported here so that importing one module of the package never drags in the
rest (the modules import each other directly, without a circle through this file)."""
